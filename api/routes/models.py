"""The base models jobs and classify can use."""

from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter

from saft_core.config import DEFAULT_MODEL, ModelSpec
from saft_core.models import available_models, resolve_default
from saft_service.allowed_models import weights_files

from ..deps import CurrentTenant, SettingsDep
from ..problems import AUTH_RESPONSES
from ..schemas import ModelPublic, ModelsPublic

router = APIRouter(prefix="/v1/models", tags=["models"], responses=AUTH_RESPONSES)


@lru_cache(maxsize=1)
def _models() -> list[ModelPublic]:
    data = []
    for m in available_models():
        default = resolve_default(ModelSpec(m["name"])).pretrained
        offline = default is not None and default in m["cached_pretrained"]
        data.append(ModelPublic(**m, default_pretrained=default, available_offline=offline))
    data.sort(key=lambda m: (m.name != DEFAULT_MODEL, not m.available_offline, m.name))
    return data


@router.get("", response_model=ModelsPublic, summary="List base models")
def list_models(_: CurrentTenant, settings: SettingsDep) -> ModelsPublic:
    """Architectures with their pretrained tags, and the weights files of the service's models folder. A model
    `available_offline` runs without a download; the others download their weights on first use. The default is
    listed first."""
    return ModelsPublic(default=DEFAULT_MODEL, data=_models(), weights_files=weights_files(settings))
