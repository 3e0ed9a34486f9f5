"""The ``prism`` command line: serve, check and explain policies, build demo artefacts.

Every command and sub-command has ``--help``. Subcommands register themselves in
:func:`build_parser`; each handler takes the parsed namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .settings import Settings

    overrides: dict[str, object] = {}
    for name in ("policy", "host", "port", "redis_url", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    settings = Settings(**overrides)  # type: ignore[arg-type]
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=10,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prism", description="Prism: a multimodal model gateway (text, image, recommendation)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway", description="Run the gateway (HTTP).")
    serve.add_argument("--policy", type=Path, help="policy file (default: policies/default.yaml)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument("--redis-url", help="shared Redis cache, e.g. redis://localhost:6379/0")
    serve.add_argument("--data-dir", type=Path, help="folder relative model paths resolve in")
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

    for register in _EXTENSIONS:
        register(sub)
    return parser


#: other modules add sub-commands here: ``fn(subparsers) -> None``
_EXTENSIONS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
