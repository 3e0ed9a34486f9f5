"""A self-contained HTML report of one experiment: the console's experiment view, its script
and style inlined, the report's JSON embedded. One file to attach to a decision; it opens
offline, years later."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from ._assets import CONSOLE_FILES


def _script_safe(text: str) -> str:
    """Text that cannot end the <script> it sits in."""
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def report_html(report: dict[str, Any], *, source: str = "", generated_at: str = "") -> str:
    css = (CONSOLE_FILES / "console.css").read_text(encoding="utf-8")
    js = (CONSOLE_FILES / "console.js").read_text(encoding="utf-8")
    data = json.dumps(report, separators=(",", ":"), allow_nan=False)
    name = escape(str(report.get("name", "experiment")))
    where = escape(source)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Prism experiment report · {name}</title>
<style>{css}</style>
<script>window.PRISM_REPORT = {_script_safe(data)};</script>
<script>{_script_safe(js)}</script>
</head><body data-page="report">
<header><span class="brand">Prism</span><span>experiment report: {name}</span>
<span class="status" id="status">from {where} · {escape(generated_at)}</span></header>
<main><noscript>This report draws its tables and charts with JavaScript.</noscript></main>
<script type="application/json" id="report-data">{_script_safe(data)}</script>
</body></html>
"""
