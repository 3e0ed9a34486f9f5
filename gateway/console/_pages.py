"""The console's pages: one HTML shell per page; the data comes from the admin API.

The shell holds no data, so it is served without a key; everything it shows is read by the
browser from ``/admin/*`` with the operator's admin key (asked once, kept for the tab's
session), exactly as a script would read it.
"""

from __future__ import annotations

from html import escape

from litestar import Controller, MediaType, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

#: page -> title, in the navigation's order
PAGES = {
    "targets": "Routes & targets",
    "models": "Models",
    "cache": "Cache",
    "experiments": "Experiments",
}
STATIC = "/console/static"


def shell(page: str, *, title: str = "Prism console") -> str:
    """The page's HTML: navigation, an empty main, the console's script and style."""
    nav = "".join(
        f'<a href="/console/{name}" class="{"active" if name == page else ""}" '
        f'data-nav="{name}">{escape(label)}</a>'
        for name, label in PAGES.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · {escape(PAGES[page])}</title>
<link rel="stylesheet" href="{STATIC}/console.css">
<script src="{STATIC}/console.js" defer></script>
</head><body data-page="{page}">
<header><span class="brand">Prism</span>{nav}<a href="/schema/swagger">API</a>
<span class="status" id="status">loading…</span></header>
<main><p class="muted">Loading…</p></main>
</body></html>
"""


class ConsolePages(Controller):
    path = "/console"
    include_in_schema = False
    # the shells carry no data (the admin API behind them checks the key); not model traffic
    opt = {"public": True}

    @get("/", media_type=MediaType.HTML)
    async def index(self) -> str:
        return shell("targets")

    @get("/{page:str}", media_type=MediaType.HTML)
    async def page(self, page: FromPath[str]) -> str:
        if page not in PAGES:
            raise NotFoundException(f"no console page {page!r} (pages: {', '.join(PAGES)})")
        return shell(page)
