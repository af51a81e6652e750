"""Builds the FastAPI app. ``uvicorn api.main:app`` serves it; ``saft api`` and ``saft serve`` do the same."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from PIL import Image

from saft_service import __version__
from saft_service import metrics as service_metrics
from saft_service.logs import setup_logging
from saft_service.reaper import Reaper
from saft_service.settings import Settings, get_settings
from saft_service.storage import Storage

from . import problems
from .classifier_cache import ClassifierCache
from .deps import key_checker
from .observability import RequestObservation
from .request_limits import AuthenticateFirst, BodyTimeout, ContentLengthLimit, JsonBodyLimit
from .routes import (
    classify,
    console,
    datasets,
    health,
    jobs,
    metrics,
    models,
    thumbnails,
    uploads,
    usage,
    webhooks,
)

log = logging.getLogger(__name__)

DESCRIPTION = """\
Fine-tune CLIP models with SAFT (sparse adaptation: only the ~0.1 % of parameters with the largest gradient
scores are trained) and serve them.

1. `POST /v1/datasets` an ImageFolder archive (larger ones: the resumable `/v1/uploads`);
2. `POST /v1/jobs`;
3. poll `GET /v1/jobs/{id}` or stream `GET /v1/jobs/{id}/events/stream`;
4. download `GET /v1/jobs/{id}/checkpoint`;
5. `POST /v1/classify`.

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
        service_metrics.API_PROCESSES.set(1)
        try:
            yield
        finally:
            if reaper:
                reaper.stop()
            service_metrics.mark_process_dead(os.getpid())

    app = FastAPI(
        title="SAFT service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by console.install from vendored assets (works offline)
        redoc_url=None,  # ReDoc would load its script from a CDN
    )
    app.state.settings = settings
    # PIL's own decompression-bomb check at our limit, as an error rather than a warning (uploads and classify
    # also check each image's size from its header before decoding it).
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    app.state.classifiers = ClassifierCache(
        settings.classifier_cache_size, settings.api_device, max_bytes=settings.classifier_cache_bytes
    )
    problems.install(app)
    # Middlewares run outermost last-added: the API key, then the declared length, then JSON size and depth;
    # none of them reads a body it then refuses.
    app.add_middleware(
        JsonBodyLimit, max_bytes=settings.max_json_body_bytes, max_depth=settings.max_json_depth
    )
    # Body limits per router, not on the app: the app-level check answers a declared length in plain text
    # before any middleware of ours could answer it as a problem (ContentLengthLimit does that instead).
    routers: list[tuple[APIRouter, int | None]] = [  # in the order they are matched; a body limit, or None
        (health.router, None), (metrics.router, None), (models.router, None),
        (datasets.router, settings.max_upload_bytes), (uploads.router, settings.max_upload_part_bytes),
        (usage.router, None), (jobs.router, settings.max_json_body_bytes),
        (classify.router, settings.max_request_bytes), (thumbnails.router, None),
        (webhooks.router, settings.max_json_body_bytes),
    ]
    app.add_middleware(
        ContentLengthLimit,
        default=settings.max_request_bytes,
        by_prefix={router.prefix: limit for router, limit in routers if limit is not None},
    )
    app.add_middleware(AuthenticateFirst, check=key_checker(settings))
    app.add_middleware(BodyTimeout, seconds=settings.request_body_timeout)  # every reader of the body is timed
    app.add_middleware(RequestObservation)  # outermost of ours: every answer (a 408 too) gets the request id
    app.state.metrics_registry = service_metrics.scrape_registry(service_metrics.StoreCollector(settings))
    for router, limit in routers:
        if limit is None:
            app.include_router(router)
        else:
            app.include_router(router, max_body_size=limit)
    console.install(app)
    problems.document_problems(app)
    datasets.document_bodies(app)
    return app


def _default_app() -> FastAPI:
    settings = get_settings()
    setup_logging(settings.log_level, settings.log_format)
    return create_app(settings)


app = _default_app()
