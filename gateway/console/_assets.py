"""Files the browser loads, served by the gateway itself (nothing from a CDN).

The console's own script and style live beside this module. Swagger UI comes from the
``swagger-ui-bundle-v2`` distribution (Swagger UI's release files, Apache-2.0, its licence in
the distribution's metadata), served under ``/schema/swagger-ui``.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

CONSOLE_FILES = Path(__file__).with_name("static")
SWAGGER_PATH = "/schema/swagger-ui"


def swagger_files() -> Path:
    """The Swagger UI release the installed bundle ships."""
    import swagger_ui_bundle

    return Path(swagger_ui_bundle.swagger_ui_path)


def console_static() -> Router:
    return create_static_files_router(
        "/console/static", [CONSOLE_FILES], name="console-static", opt={"public": True}
    )


def swagger_static() -> Router:
    # under /schema: open like the OpenAPI document it renders
    return create_static_files_router(
        SWAGGER_PATH, [swagger_files()], name="swagger-ui", opt={"public": True}
    )


def offline_swagger() -> SwaggerRenderPlugin:
    """``/schema/swagger`` with its script and style from this gateway."""
    return SwaggerRenderPlugin(
        js_url=f"{SWAGGER_PATH}/swagger-ui-bundle.js",
        css_url=f"{SWAGGER_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{SWAGGER_PATH}/swagger-ui-standalone-preset.js",
        # Litestar's default favicon is on a CDN too
        favicon=f"<link rel='icon' type='image/png' href='{SWAGGER_PATH}/favicon-32x32.png'>",
    )
