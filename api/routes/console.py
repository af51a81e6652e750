"""The console (a single page over the public ``/v1`` API) and the API docs, served with every asset they need.

Nothing here reaches the internet: Swagger UI and Chart.js are vendored under ``api/static/vendor`` (with
their licences) and shipped as package data, so ``/docs`` and ``/console`` render on an offline machine.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
STATIC_URL = "/static"
SWAGGER = f"{STATIC_URL}/vendor/swagger-ui"

router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/console")


@router.get("/console")
def console() -> FileResponse:
    # no-cache: the page is tiny, and a stale copy after an upgrade would call routes that changed.
    return FileResponse(STATIC_DIR / "console" / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - API docs",
        swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png",
        # Swagger UI would otherwise send the schema to validator.swagger.io for a badge.
        swagger_ui_parameters={"validatorUrl": None},
    )


def install(app: FastAPI) -> None:
    """Serve the console, ``/docs`` and the static assets on ``app`` (created with ``docs_url=None``)."""
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")
