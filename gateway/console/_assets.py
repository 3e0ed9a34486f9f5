"""Files the browser loads, served by the gateway itself (nothing from a CDN).

The console's own script and style live beside this module. Swagger UI comes from the
``swagger-ui-bundle-v2`` distribution (Swagger UI's release files, Apache-2.0, its licence in
the distribution's metadata), served under ``/schema/swagger-ui``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from litestar import Router
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

log = logging.getLogger("prism")

CONSOLE_FILES = Path(__file__).with_name("static")
SWAGGER_PATH = "/schema/swagger-ui"


def swagger_files() -> Path | None:
    """The Swagger UI release the installed bundle ships; None without the bundle (an
    install from an older lock): the gateway still starts, and says what is missing."""
    try:
        import swagger_ui_bundle
    except ImportError:
        log.warning("swagger-ui-bundle-v2 is not installed: /schema/swagger needs a CDN to render")
        return None
    return Path(swagger_ui_bundle.swagger_ui_path)


def console_static() -> Router:
    return create_static_files_router(
        "/console/static", [CONSOLE_FILES], name="console-static", opt={"public": True}
    )


def swagger_static() -> list[Router]:
    """The Swagger UI files (under /schema: open like the OpenAPI document they render)."""
    files = swagger_files()
    if files is None:
        return []
    return [
        create_static_files_router(SWAGGER_PATH, [files], name="swagger-ui", opt={"public": True})
    ]


def offline_swagger() -> SwaggerRenderPlugin:
    """``/schema/swagger`` with its script and style from this gateway."""
    if swagger_files() is None:
        return SwaggerRenderPlugin()
    return SwaggerRenderPlugin(
        js_url=f"{SWAGGER_PATH}/swagger-ui-bundle.js",
        css_url=f"{SWAGGER_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{SWAGGER_PATH}/swagger-ui-standalone-preset.js",
        # Litestar's default favicon is on a CDN too
        favicon=f"<link rel='icon' type='image/png' href='{SWAGGER_PATH}/favicon-32x32.png'>",
    )
