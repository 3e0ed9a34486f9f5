"""The checked-in OpenAPI document (``gateway/openapi.json``) and its freshness check.

python -m prism.gateway.openapi          # rewrite gateway/openapi.json from the live app
python -m prism.gateway.openapi --check  # exit 1 when the file differs from the live app
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"


def live_openapi() -> dict[str, Any]:
    """The OpenAPI document the app serves at /schema/openapi.json (no model is loaded)."""
    from .app import create_app
    from .settings import Settings

    app = create_app(Settings(load_models=False, policy_watch_s=0))
    schema: dict[str, Any] = app.openapi_schema.to_schema()
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prism.gateway.openapi",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--check", action="store_true", help="fail if the checked-in file is stale")
    args = parser.parse_args(argv)
    text = render(live_openapi())
    if args.check:
        current = OPENAPI_FILE.read_text() if OPENAPI_FILE.exists() else ""
        if current != text:
            print(
                f"{OPENAPI_FILE} is stale: run `python -m prism.gateway.openapi`", file=sys.stderr
            )
            return 1
        print(f"{OPENAPI_FILE} is current")
        return 0
    OPENAPI_FILE.write_text(text)
    print(f"wrote {OPENAPI_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
