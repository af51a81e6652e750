"""``GET /metrics``: the service's Prometheus metrics (no tenant key; ``SAFT_METRICS_TOKEN`` restricts it).

The store-wide gauges (jobs by status, queue depth, storage per tenant) are read from the store at each scrape,
so any API process answers them alike; with several API processes (``saft api --workers N``) the counters and
histograms of all of them are summed (prometheus_client's multiprocess mode; see saft_service/metrics.py).
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import SettingsDep
from ..problems import ProblemError

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, settings: SettingsDep) -> Response:
    if settings.metrics_token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), settings.metrics_token.encode()
        ):
            raise ProblemError(
                401,
                "unauthorized",
                "the metrics need the operator's token: 'Authorization: Bearer <SAFT_METRICS_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
