"""``prism keys create | list | revoke | update``: managed keys through a gateway's admin API.

The admin key comes from ``PRISM_ADMIN_KEY`` (never a flag: flags end up in shell history and
process listings). Every command prints the gateway's JSON answer; a refused request prints
its problem document on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> int:
    import httpx

    admin = os.environ.get("PRISM_ADMIN_KEY")
    if not admin:
        print("prism keys: set PRISM_ADMIN_KEY to an admin key", file=sys.stderr)
        return 2
    try:
        answer = httpx.request(
            method,
            args.url.rstrip("/") + path,
            json=body,
            headers={"Authorization": f"Bearer {admin}"},
            timeout=args.timeout,
        )
    except httpx.HTTPError as exc:
        print(f"prism keys: {args.url}: {exc}", file=sys.stderr)
        return 1
    out = sys.stdout if answer.is_success else sys.stderr
    try:
        print(json.dumps(answer.json(), indent=2), file=out)
    except ValueError:
        print(answer.text, file=out)
    return 0 if answer.is_success else 1


def _expiry(text: str) -> float:
    """Unix seconds, or an ISO 8601 time (``2027-01-31T00:00:00Z``)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a Unix time or ISO 8601 time: {text!r}") from exc


def _spec(args: argparse.Namespace, *, clearing: bool) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in ("name", "models", "tasks", "rpm", "rpd", "max_concurrent", "expires_at"):
        value = getattr(args, name, None)
        if value is not None:
            body[name] = value
    if args.admin is not None:
        body["admin"] = args.admin
    if clearing:
        for name in args.clear or []:
            body[name] = None
    return body


def _create(args: argparse.Namespace) -> int:
    return _call(args, "POST", "/admin/keys", _spec(args, clearing=False))


def _list(args: argparse.Namespace) -> int:
    return _call(args, "GET", "/admin/keys")


def _revoke(args: argparse.Namespace) -> int:
    return _call(args, "DELETE", f"/admin/keys/{args.id}")


def _update(args: argparse.Namespace) -> int:
    return _call(args, "PATCH", f"/admin/keys/{args.id}", _spec(args, clearing=True))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"the gateway (default {DEFAULT_URL})")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")


def _fields(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", metavar="MODEL", help="models the key may use")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="tasks: embed classify recommend")
    p.add_argument("--rpm", type=int, help="requests per minute")
    p.add_argument("--rpd", type=int, help="requests per UTC day")
    p.add_argument("--max-concurrent", type=int, help="requests in flight at once")
    p.add_argument("--expires-at", type=_expiry, help="Unix time or ISO 8601 (UTC)")
    admin = p.add_mutually_exclusive_group()
    admin.add_argument("--admin", action="store_true", default=None, help="an admin key")
    admin.add_argument("--no-admin", dest="admin", action="store_false", help="not an admin key")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser(
        "keys",
        help="manage API keys on a running gateway",
        description="Create, list, change and revoke managed API keys through a gateway's "
        "admin API (the admin key is read from PRISM_ADMIN_KEY). Prints JSON.",
    )
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = ksub.add_parser(
        "create",
        help="create a key (its secret is printed once)",
        description="Create a managed key. The answer's 'key' is the secret: it is shown "
        "only now; the gateway keeps its SHA-256.",
    )
    create.add_argument("name", help="who the key is for (e.g. a team or a job)")
    _fields(create)
    _common(create)
    create.set_defaults(handler=_create)

    lst = ksub.add_parser(
        "list",
        help="list keys with usage",
        description="List managed keys "
        "(no secrets) with last use, requests today and requests in flight.",
    )
    _common(lst)
    lst.set_defaults(handler=_list)

    revoke = ksub.add_parser(
        "revoke", help="revoke a key", description="Revoke a key on every replica at once."
    )
    revoke.add_argument("id", help="the key id (from create or list)")
    _common(revoke)
    revoke.set_defaults(handler=_revoke)

    update = ksub.add_parser(
        "update",
        help="change a key's scopes and limits",
        description="Change a key: the options given replace its values; --clear removes a "
        "limit, scope or expiry.",
    )
    update.add_argument("id", help="the key id")
    update.add_argument("--name", help="a new name")
    _fields(update)
    update.add_argument(
        "--clear",
        nargs="+",
        choices=["models", "tasks", "rpm", "rpd", "max_concurrent", "expires_at"],
        help="fields to clear (no limit / every model / never expires)",
    )
    _common(update)
    update.set_defaults(handler=_update)


__all__ = ["register"]
