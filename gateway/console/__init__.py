"""The operator console (``/console``) and the browser files the gateway serves itself."""

from ._assets import console_static, offline_swagger, swagger_static
from ._pages import PAGES, ConsolePages, shell
from ._report_html import report_html

__all__ = [
    "PAGES",
    "ConsolePages",
    "console_static",
    "offline_swagger",
    "report_html",
    "shell",
    "swagger_static",
]
