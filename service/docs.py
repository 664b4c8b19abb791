"""Swagger UI at ``/docs`` and ReDoc at ``/redoc``, from local files: no CDN, works offline.

The JavaScript and CSS are those that the ``fastapi-offline`` package ships (MIT; Swagger UI
5.x, Apache-2.0, and ReDoc 2.x, MIT), served from its install directory: nothing is copied
into this repository and nothing is fetched from another host.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_ASSETS = "/static/docs"
# The pages may load only what this service serves. ReDoc's bundle links a logo on another
# host, unconditionally: this policy stops the browser from asking for it.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'; "
    "font-src 'self' data:; frame-ancestors 'self'"
)


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = PAGE_CSP
    return page


# Swagger UI checks a spec against validator.swagger.io unless told not to: that is a host.
_SWAGGER_PARAMETERS = {"validatorUrl": None, "tryItOutEnabled": True}


def _assets_dir() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/docs/oauth2-redirect`` and ``/redoc`` with local assets.

    The app must be built with ``docs_url=None, redoc_url=None`` (FastAPI's own pages load
    their assets from a CDN).
    """
    app.mount(DOCS_ASSETS, StaticFiles(directory=_assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    def page(
        render: Callable[..., HTMLResponse], title: str, **paths: str
    ) -> Callable[[Request], Awaitable[HTMLResponse]]:
        """A page that ``render`` writes, titled ``title``, its URLs (the OpenAPI document's
        and ``paths``) under the root path the app is served at."""

        async def serve(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "")
            urls = {name: f"{root}{path}" for name, path in paths.items()}
            html = render(
                openapi_url=f"{root}{openapi_url}", title=f"{app.title} — {title}", **urls
            )
            return _local_only(html)

        return serve

    swagger_ui = page(
        partial(get_swagger_ui_html, swagger_ui_parameters=_SWAGGER_PARAMETERS),
        "API",
        oauth2_redirect_url="/docs/oauth2-redirect",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
    )
    app.get("/docs", include_in_schema=False)(swagger_ui)

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _local_only(get_swagger_ui_oauth2_redirect_html())

    redoc = page(
        partial(get_redoc_html, with_google_fonts=False),
        "API reference",
        redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
    )
    app.get("/redoc", include_in_schema=False)(redoc)
