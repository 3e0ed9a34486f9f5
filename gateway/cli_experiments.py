"""``prism experiments report``: one experiment's report as a self-contained HTML file."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from .console import report_html


def fetch_report(url: str, name: str, key: str | None, timeout_s: float = 10.0) -> dict[str, Any]:
    """``GET /admin/experiments/{name}`` from a running gateway."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(
        f"{url.rstrip('/')}/admin/experiments/{quote(name, safe='')}",
        headers=headers,
        timeout=timeout_s,
    )
    if r.status_code != 200:
        try:
            detail = r.json().get("detail") or r.text
        except ValueError:
            detail = r.text
        raise SystemExit(f"prism: {url} answered {r.status_code}: {detail}")
    report: dict[str, Any] = r.json()
    return report


def _report(args: argparse.Namespace) -> int:
    key = args.key or os.environ.get("PRISM_ADMIN_KEY")
    try:
        report = fetch_report(args.url, args.name, key)
    except httpx.HTTPError as exc:
        print(f"prism: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    args.out.write_text(report_html(report, source=args.url, generated_at=stamp), encoding="utf-8")
    significant = [f"{c['arm']}: {', '.join(c['significant'])}" for c in report["comparison"]]
    print(
        f"wrote {args.out} ({report['name']}, state {report['state']}; significant: "
        f"{'; '.join(significant) if any(c['significant'] for c in report['comparison']) else 'none yet'})"
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    experiments = sub.add_parser(
        "experiments",
        help="experiment reports",
        description="Work with the experiments of a running gateway.",
    )
    esub = experiments.add_subparsers(dest="experiments_command", required=True, metavar="ACTION")
    report = esub.add_parser(
        "report",
        help="write one experiment's report as a self-contained HTML file",
        description="Fetch GET /admin/experiments/NAME from a running gateway and write an "
        "HTML file with the console's tables and charts (arms, exposure over time, forest "
        "plot of each metric's difference vs control with fixed-sample and always-valid "
        "intervals, sample-ratio check, guardrails) and the report's JSON inside: one file, "
        "no network needed to open it.",
    )
    report.add_argument("name", help="the experiment's name in the running policy")
    report.add_argument(
        "--url", default="http://127.0.0.1:8080", help="the gateway (default: %(default)s)"
    )
    report.add_argument(
        "--out", type=Path, default=Path("report.html"), help="default: %(default)s"
    )
    report.add_argument(
        "--key", help="admin key (default: $PRISM_ADMIN_KEY; needed when the gateway has keys)"
    )
    report.add_argument("--json", type=Path, help="also write the report's JSON here")
    report.set_defaults(handler=_report)
