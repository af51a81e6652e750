"""Builds the FastAPI app. ``uvicorn api.main:app`` serves it; ``saft api`` and ``saft serve`` do the same."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from saft_service import __version__
from saft_service.logs import setup_logging
from saft_service.reaper import Reaper
from saft_service.settings import Settings, get_settings
from saft_service.storage import Storage

from . import problems
from .classify import ClassifierCache
from .limits import ContentLengthLimit
from .routes import classify, console, datasets, health, jobs, models, thumbnails

log = logging.getLogger(__name__)

DESCRIPTION = """\
Fine-tune CLIP models with SAFT (sparse adaptation: only the ~0.1 % of parameters with the largest gradient
scores are trained) and serve them.

1. `POST /v1/datasets` an ImageFolder archive; 2. `POST /v1/jobs`; 3. poll `GET /v1/jobs/{id}` or stream
`GET /v1/jobs/{id}/events/stream`; 4. download `GET /v1/jobs/{id}/checkpoint`; 5. `POST /v1/classify`.

Every `/v1` call needs `Authorization: Bearer <key>` (make one with `saft keys create --tenant NAME`).
Resources belong to the key's tenant; other tenants get 404. Errors are `application/problem+json`
(RFC 9457) with a stable `code`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API application for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    Storage(settings).ensure()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        reaper = Reaper(settings) if settings.run_reaper else None
        if reaper:
            reaper.start()
        try:
            yield
        finally:
            if reaper:
                reaper.stop()

    app = FastAPI(
        title="SAFT service",
        version=__version__,
        description=DESCRIPTION,
        max_body_size=settings.max_request_bytes,
        lifespan=lifespan,
        docs_url=None,  # served by console.install from vendored assets (works offline)
        redoc_url=None,  # ReDoc would load its script from a CDN
    )
    app.state.settings = settings
    app.state.classifiers = ClassifierCache(settings.classifier_cache_size, settings.api_device)
    problems.install(app)
    app.add_middleware(
        ContentLengthLimit,
        default=settings.max_request_bytes,
        by_prefix={"/v1/datasets": settings.max_upload_bytes},
    )
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(datasets.router, max_body_size=settings.max_upload_bytes)
    app.include_router(jobs.router)
    app.include_router(classify.router)
    app.include_router(thumbnails.router)
    console.install(app)
    return app


def _default_app() -> FastAPI:
    settings = get_settings()
    setup_logging(settings.log_level)
    return create_app(settings)


app = _default_app()
