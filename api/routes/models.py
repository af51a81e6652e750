"""The base models jobs and classify can use."""

from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter

from saft_core.config import DEFAULT_MODEL
from saft_core.models import available_models

from ..deps import CurrentTenant
from ..problems import AUTH_RESPONSES
from ..schemas import ModelPublic, ModelsPublic

router = APIRouter(prefix="/v1/models", tags=["models"], responses=AUTH_RESPONSES)


@lru_cache(maxsize=1)
def _models() -> ModelsPublic:
    data = [ModelPublic(**m) for m in available_models()]
    data.sort(key=lambda m: (m.name != DEFAULT_MODEL, not m.local, m.name))
    return ModelsPublic(default=DEFAULT_MODEL, data=data)


@router.get("", response_model=ModelsPublic, summary="List base models")
def list_models(_: CurrentTenant) -> ModelsPublic:
    """Architectures with their pretrained tags. `local` models work offline; the default is listed first."""
    return _models()
