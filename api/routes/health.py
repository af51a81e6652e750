"""Liveness and readiness probes (no key needed)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable

from fastapi import APIRouter

from saft_service.db import ping
from saft_service.queue import ping_broker
from saft_service.storage import Storage

from ..deps import SettingsDep
from ..problems import UNAVAILABLE, ProblemError
from ..schemas import HealthPublic

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


class LowSpace(Exception):
    """The data dir's file system has less free space than ``SAFT_MIN_FREE_BYTES``."""


@router.get("/healthz", response_model=HealthPublic, summary="The process is up")
def healthz() -> HealthPublic:
    return HealthPublic(status="ok")


@router.get(
    "/readyz", response_model=HealthPublic, responses=UNAVAILABLE, summary="Database, queue and storage work"
)
def readyz(settings: SettingsDep) -> HealthPublic:
    checks: dict[str, str] = {}
    failed: list[str] = []
    probes: dict[str, Callable[[], object]] = {
        "database": lambda: ping(settings),
        "broker": lambda: ping_broker(settings),
    }
    storage = Storage(settings)

    def storage_probe() -> None:
        tempfile.TemporaryFile(dir=storage.staging).close()
        free = storage.free_bytes()
        if free < settings.min_free_bytes:
            raise LowSpace(f"low_space: {free} bytes free, under SAFT_MIN_FREE_BYTES={settings.min_free_bytes}")

    probes["storage"] = storage_probe
    for name, probe in probes.items():
        try:
            probe()
            checks[name] = "ok"
        except Exception as e:  # any failure means not ready; say which
            log.warning("readiness check %s failed: %s", name, e)
            checks[name] = str(e) if isinstance(e, LowSpace) else f"failed: {type(e).__name__}"
            failed.append(name)
    if failed:
        raise ProblemError(503, "not_ready", f"not ready: {', '.join(failed)} unavailable", checks=checks)
    return HealthPublic(status="ready", checks=checks)
