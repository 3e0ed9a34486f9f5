"""The ``prism`` command line: serve, check, explain and export policies, manage the models
of a running gateway, build demo artefacts.

Every command and sub-command has ``--help``. Subcommands register themselves in
:func:`build_parser`; each handler takes the parsed namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litestar import Litestar

    from .settings import Settings

from .cli_args import positive_int
from .serving import add_drain_arguments, configure_logging, dump_stacks_on_sigusr2, run_http

Handler = Callable[[argparse.Namespace], int]


def serve_app() -> Litestar:
    """The app of one ``prism serve --workers N`` worker (a uvicorn factory).

    Worker processes are spawned fresh, so they read their settings from the ``PRISM_*``
    environment, which :func:`_export_to_workers` filled from the parent's flags.
    """
    from .app import create_app
    from .settings import Settings

    settings = Settings()
    configure_logging(settings.log_level)
    dump_stacks_on_sigusr2()  # each worker process: its own stacks
    return create_app(settings)


def _export_to_workers(
    overrides: dict[str, object], settings: Settings, *, has_experiments: bool
) -> None:
    """Hand the command line to the worker processes as the ``PRISM_*`` variables it overrides."""
    for name, value in overrides.items():
        os.environ[f"PRISM_{name.upper()}"] = str(value)
    if settings.redis_url is None and settings.experiments_persist:
        # every worker would rewrite the one experiments file with its own figures, each
        # overwriting the others': keep them in memory (per worker) instead
        os.environ["PRISM_EXPERIMENTS_PERSIST"] = "false"
        if has_experiments:
            logging.getLogger("prism").warning(
                "%d workers without Redis: experiment figures and guardrail stops are kept per "
                "worker, in memory only; use --redis-url to share and keep them",
                settings.workers,
            )


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .app import create_app
    from .settings import Settings

    overrides: dict[str, object] = {}
    for name in (
        "policy",
        "host",
        "port",
        "workers",
        "redis_url",
        "data_dir",
        "drain_grace_s",
        "drain_timeout_s",
    ):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "redis_cluster", False):
        overrides["redis_cluster"] = True
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:  # a bad PRISM_* value or flag: say which, no traceback
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            print(f"prism serve: {where}: {err['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    from .policy import PolicyLoadError, load_policy_file

    try:  # refuse a bad file up front, with file:line: reason, not a startup traceback
        document = load_policy_file(settings.policy)
    except PolicyLoadError as exc:
        for issue in exc.issues:
            print(f"prism serve: {issue}", file=sys.stderr)
        return 1
    # prism.kernels.choice reads the variable without torch: a gateway in front of remote models
    # never loads a framework it does not call (see ARCHITECTURE.md, "Frameworks load late")
    from prism.kernels.choice import requested_backend

    try:  # a typo in PRISM_KERNELS fails here, not as a 502 on every recommendation
        requested_backend()
    except ValueError as exc:
        print(f"prism serve: {exc}", file=sys.stderr)
        return 2
    if settings.workers == 1:
        run_http(
            create_app(settings),
            settings.host,
            settings.port,
            settings.log_level,
            drain_timeout_s=settings.drain_timeout_s,
        )
        return 0
    _export_to_workers(overrides, settings, has_experiments=bool(document.experiments))
    # a fixed import string: under `python -m` this module is __main__, which workers lack
    run_http(
        "prism.gateway.cli:serve_app",
        settings.host,
        settings.port,
        settings.log_level,
        workers=settings.workers,
        drain_timeout_s=settings.drain_timeout_s,
    )
    return 0


def _policy_check(args: argparse.Namespace) -> int:
    from .policy import PolicyLoadError, load_policy_file

    status = 0
    for file in args.files:
        try:
            doc = load_policy_file(file)
        except PolicyLoadError as exc:
            for issue in exc.issues:
                print(issue, file=sys.stderr)
            status = 1
            continue
        print(
            f"{file}: ok ({len(doc.models)} models, {len(doc.routes)} routes, "
            f"{len(doc.experiments)} experiments)"
        )
    return status


def _policy_explain(args: argparse.Namespace) -> int:
    import json

    from pydantic import ValidationError

    from prism.backends import PrismError

    from .explain import explain, format_explanation
    from .policy import PolicyLoadError, compile_policy_file, format_path

    raw = args.request
    try:
        text = Path(raw[1:]).read_text(encoding="utf-8") if raw.startswith("@") else raw
        request = json.loads(text)
        policy = compile_policy_file(str(args.file))
        result = explain(policy, request, dict(args.header))
    except PolicyLoadError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    except ValidationError as exc:  # the request: named field by field, as the server does
        for err in exc.errors():
            where = format_path(err["loc"]) or "request"
            print(f"cannot explain: {where}: {err['msg']}", file=sys.stderr)
        return 2
    except (OSError, ValueError, PrismError) as exc:
        # json/pydantic errors are ValueErrors; PrismError: no route, unknown model, ...
        print(f"cannot explain: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_explanation(result))
    return 0


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value


def _policy_schema(args: argparse.Namespace) -> int:
    from .policy._schema import render_schema

    text = render_schema()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run 'prism policy schema'", file=sys.stderr)
            return 1
        print(f"{args.out}: up to date")
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prism", description="Prism: a multimodal model gateway (text, image, recommendation)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway (HTTP). Every setting is also an environment variable "
        "PRISM_<NAME> (e.g. PRISM_REDIS_URL, PRISM_MAX_BODY_BYTES, PRISM_API_KEYS); flags win.",
    )
    serve.add_argument("--policy", type=Path, help="policy file (default: policies/default.yaml)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="worker processes sharing the port, for hosts with more cores (default 1); each "
        "loads its own models and keeps its own in-process cache and metrics; Redis is shared",
    )
    serve.add_argument(
        "--redis-url",
        help="Redis shared by every replica (cache, experiment counters): redis://host:6379/0 "
        "for one server, redis+cluster://host:6379[,host:6379...] for a Redis Cluster",
    )
    serve.add_argument(
        "--redis-cluster",
        action="store_true",
        default=None,
        help="the --redis-url (redis:// or rediss://) is a Redis Cluster seed",
    )
    serve.add_argument("--data-dir", type=Path, help="folder relative model paths resolve in")
    add_drain_arguments(serve)
    serve.set_defaults(handler=_serve)

    policy = sub.add_parser(
        "policy",
        help="check and explain policy files",
        description="Work with policy files offline.",
    )
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = psub.add_parser(
        "check",
        help="validate policy files",
        description="Validate policy files: exit 0 if all are valid, 1 otherwise (file:line: reason on stderr).",
    )
    check.add_argument("files", nargs="+", type=Path, help="policy files")
    check.set_defaults(handler=_policy_check)
    explain = psub.add_parser(
        "explain",
        help="show the decision for a request, offline",
        description="Print rule, model, version, arm, ordered targets, fallbacks, cache key "
        "and why, for one /v1/infer request body.",
    )
    explain.add_argument("file", type=Path, help="policy file")
    explain.add_argument(
        "--request", required=True, help="request JSON, or @FILE to read it from a file"
    )
    explain.add_argument(
        "--header",
        action="append",
        default=[],
        type=_header,
        metavar="NAME=VALUE",
        help="a request header (routes may match on headers); repeat for more",
    )
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    explain.set_defaults(handler=_policy_explain)
    from .policy._schema import SCHEMA_PATH

    schema = psub.add_parser(
        "schema",
        help="write (or --check) the policy JSON Schema",
        description="Generate the policy JSON Schema from the policy models, for editor "
        "validation and completion; --check only verifies the file is current (CI).",
    )
    schema.add_argument(
        "--out", type=Path, default=SCHEMA_PATH, help="default: policies/schema.json"
    )
    schema.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    schema.set_defaults(handler=_policy_schema)
    from .cli_repository import add_export_parser, add_models_parser

    add_export_parser(psub)
    add_models_parser(sub)

    from .worker import add_worker_parser

    add_worker_parser(sub)

    from .cli_models import register as register_model_commands

    register_model_commands(sub)

    from .cli_experiments import register as register_experiment_commands

    register_experiment_commands(sub)

    from .cli_keys import register as register_key_commands

    register_key_commands(sub)

    from .cli_optimize import register as register_optimize

    register_optimize(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
