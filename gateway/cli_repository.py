"""``prism policy export`` (the policy file with the run-time overrides, as one file) and
``prism models list|load|unload|promote|rollback`` (the model repository API of a running
gateway, from a terminal; JSON out, an admin key from ``PRISM_ADMIN_KEY``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

#: where ``prism models`` finds the gateway when ``--url`` is not given
DEFAULT_URL = "http://127.0.0.1:8080"


# --- prism policy export -------------------------------------------------------------------


def render_export(document: Any, source: str, revision: int) -> str:
    """``document`` as policy YAML, with a header saying where it came from."""
    import yaml

    body = yaml.safe_dump(
        document.model_dump(mode="json", exclude_unset=True),
        sort_keys=False,
        allow_unicode=True,
        width=100,
    )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (
        f"# Exported by `prism policy export` at {stamp} from {source}\n"
        f"# with the run-time overrides of revision {revision} (label moves, loaded and\n"
        "# unloaded versions made through /admin/models). Served as the policy file, it\n"
        "# runs what the gateway ran; the overrides then match it and change nothing.\n"
        f"{body}"
    )


async def _read_overrides(redis_url: str | None, path: Path | None) -> Any:
    from .repository import override_store

    store = override_store(redis_url, path)
    try:
        return await store.read()
    finally:
        await store.aclose()


def _policy_export(args: argparse.Namespace) -> int:
    from prism.backends import PrismError

    from .policy import PolicyLoadError, load_policy_file, parse_policy
    from .repository import compose
    from .settings import Settings

    given = {k: v for k in ("policy", "redis_url", "overrides_file") if (v := getattr(args, k))}
    settings = Settings(**given)
    try:
        document = load_policy_file(settings.policy)
        overrides = asyncio.run(_read_overrides(settings.redis_url, settings.overrides_state()))
    except PolicyLoadError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    except PrismError as exc:  # Redis unreachable
        print(f"prism policy export: {exc.detail}", file=sys.stderr)
        return 2
    composed = compose(document, overrides)
    for item in composed.stale:
        print(f"prism policy export: left out: {item['reason']}", file=sys.stderr)
    text = render_export(composed.document, str(settings.policy), overrides.revision)
    parse_policy(text, "<export>")  # what it writes loads: never hand out a file that does not
    if args.out is None or str(args.out) == "-":
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(
            f"wrote {args.out} (policy {settings.policy} + overrides revision {overrides.revision})"
        )
    return 0


def add_export_parser(psub: Any) -> None:
    export = psub.add_parser(
        "export",
        help="write the policy file with the run-time overrides as one file",
        description="Write the policy file with the overrides operators made at run time "
        "(label moves, loaded and unloaded versions: /admin/models, `prism models`) laid "
        "over it, as one policy file to review and commit. Overrides come from the same "
        "place the gateway keeps them: Redis with --redis-url / PRISM_REDIS_URL, else the "
        "file next to the policy. Overrides the file no longer allows are left out (named "
        "on stderr).",
    )
    export.add_argument("--policy", type=Path, help="policy file (default: policies/default.yaml)")
    export.add_argument("--redis-url", help="the gateways' Redis (default: PRISM_REDIS_URL)")
    export.add_argument(
        "--overrides-file", type=Path, help="without Redis: default .<policy>.overrides.json"
    )
    export.add_argument("--out", type=Path, help="output file (default: standard output)")
    export.set_defaults(handler=_policy_export)


# --- prism models ---------------------------------------------------------------------------


def _model_at_version(text: str) -> tuple[str, str]:
    model, sep, version = text.partition("@")
    if not sep or not model or not version:
        raise argparse.ArgumentTypeError(
            f"expected MODEL@VERSION (e.g. text-embed@2), got {text!r}"
        )
    return model, version


def _request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> int:
    """One admin call; the answer's JSON goes to stdout (a problem document too), and a
    refusal also gets one line on stderr and exit status 1."""
    import httpx

    headers = {}
    key = os.environ.get("PRISM_ADMIN_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = args.url.rstrip("/") + path
    try:
        r = httpx.request(method, url, headers=headers, timeout=args.timeout, **kwargs)
    except httpx.HTTPError as exc:
        print(f"prism models: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    try:
        body = r.json()
    except ValueError:
        body = {"status": r.status_code, "detail": r.text}
    print(json.dumps(body, indent=2))
    if r.is_success:
        return 0
    detail = body.get("detail") if isinstance(body, dict) else None
    print(f"prism models: {r.status_code}: {detail or r.reason_phrase}", file=sys.stderr)
    return 1


def _models_list(args: argparse.Namespace) -> int:
    return _request(args, "GET", "/admin/models")


def _models_load(args: argparse.Namespace) -> int:
    model, version = args.target
    return _request(args, "POST", f"/admin/models/{model}/versions/{version}/load")


def _models_unload(args: argparse.Namespace) -> int:
    model, version = args.target
    params = {"force": "true"} if args.force else {}
    return _request(args, "POST", f"/admin/models/{model}/versions/{version}/unload", params=params)


def _models_promote(args: argparse.Namespace) -> int:
    model, version = args.target
    params = {"force": "true"} if args.force else {}
    return _request(
        args,
        "PUT",
        f"/admin/models/{model}/labels/{args.label}",
        json={"version": version},
        params=params,
    )


def _models_rollback(args: argparse.Namespace) -> int:
    return _request(args, "POST", f"/admin/models/{args.model}/labels/{args.label}/rollback")


def add_models_parser(sub: Any) -> None:
    models = sub.add_parser(
        "models",
        help="list, load, unload, promote and roll back models of a running gateway",
        description="Manage the models of a running gateway through its model repository API "
        "(/admin/models). Changes reach every replica sharing its Redis within a second and "
        "survive restarts; `prism policy export` writes them into a policy file. The admin "
        "key comes from PRISM_ADMIN_KEY; answers are printed as JSON (exit 1 when refused).",
    )
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    def action(
        name: str, help_text: str, description: str, handler: Any
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = msub.add_parser(name, help=help_text, description=description)
        p.add_argument(
            "--url",
            default=os.environ.get("PRISM_URL", DEFAULT_URL),
            help=f"the gateway (default: PRISM_URL, else {DEFAULT_URL})",
        )
        p.add_argument(
            "--timeout", type=float, default=300.0, help="seconds to wait for the answer (300)"
        )
        p.set_defaults(handler=handler)
        return p

    action(
        "list",
        "every model, its labels, and each version's state",
        "Print every model with its labels and, per version, its state "
        "(loading | ready | failed | unloading | unloaded), reason, backend, targets, calls in "
        "flight and when it loaded.",
        _models_list,
    )
    load = action(
        "load",
        "load a version (warmed up before it serves)",
        "Load MODEL@VERSION; it answers one warm-up inference before it counts as ready.",
        _models_load,
    )
    load.add_argument("target", type=_model_at_version, metavar="MODEL@VERSION")
    unload = action(
        "unload",
        "unload a version (calls in flight finish first)",
        "Unload MODEL@VERSION: routing to it stops, calls in flight finish (up to the "
        "gateway's PRISM_UNLOAD_DRAIN_S), then it is freed. Refused while a label, route or "
        "experiment still needs it, unless --force.",
        _models_unload,
    )
    unload.add_argument("target", type=_model_at_version, metavar="MODEL@VERSION")
    unload.add_argument("--force", action="store_true", help="unload even if still needed")
    promote = action(
        "promote",
        "point a label (default: stable) at a version",
        "Move LABEL (default: stable) of MODEL to VERSION on every replica; `prism models "
        "rollback MODEL` puts it back.",
        _models_promote,
    )
    promote.add_argument("target", type=_model_at_version, metavar="MODEL@VERSION")
    promote.add_argument("--label", default="stable", help="the label to move (default: stable)")
    promote.add_argument(
        "--force", action="store_true", help="move it even if the version is not ready here"
    )
    rollback = action(
        "rollback",
        "put a label back where it was before its last move",
        "Put LABEL (default: stable) of MODEL back where it pointed before its last move.",
        _models_rollback,
    )
    rollback.add_argument("model", metavar="MODEL")
    rollback.add_argument(
        "--label", default="stable", help="the label to roll back (default: stable)"
    )
