"""Which models the service may load: the operator's allow-list, checked before a job is queued or a
classifier is loaded.

Allowed are open_clip architectures (and the project's own) with
- no weights (``pretrained`` null or ``"none"``: a seeded random init) or the model's default (``"default"``),
- a registered pretrained tag of that architecture (``GET /v1/models`` lists them),
- a weights file inside ``SAFT_MODELS_DIR``, named relative to it,
and ``hf-hub:`` names only with ``SAFT_ALLOW_HF_HUB=true`` (they download from the internet). Anything else,
in particular any other path on the server, is refused with the same message whether or not it exists, so the
check is no oracle for the server's files.
"""

from __future__ import annotations

import os
from pathlib import Path

from saft_core.config import DEFAULT_PRETRAINED

from .input_checks import LimitError
from .settings import Settings

_NO_WEIGHTS = {None, "none", DEFAULT_PRETRAINED}


def _models_file(pretrained: str, settings: Settings) -> Path | None:
    """The file ``pretrained`` names inside the models folder, or None."""
    if settings.models_dir is None or "\x00" in pretrained:
        return None
    root = settings.models_dir.expanduser().resolve()
    path = (root / pretrained).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


# What open_clip loads as a weights file; other files in the models folder (a README, a licence) are not listed.
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
MAX_LISTED_FILES = 200


def weights_files(settings: Settings) -> list[str]:
    """The weights files ``pretrained`` may name (relative to ``SAFT_MODELS_DIR``, sorted; at most
    ``MAX_LISTED_FILES``, so a large answer is cut short; the walk stops there, but a folder of many other files is
    walked through). Empty without a models folder."""
    if settings.models_dir is None:
        return []
    root = settings.models_dir.expanduser().resolve()
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.endswith(WEIGHTS_SUFFIXES) and not name.startswith("."):
                found.append((Path(folder) / name).relative_to(root).as_posix())
                if len(found) >= MAX_LISTED_FILES:
                    return sorted(found)
    return sorted(found)


def check_model(name: str, pretrained: str | None, settings: Settings) -> None:
    """Raise ``LimitError`` (422 ``unknown_model`` / ``model_not_allowed``) unless the service may load it."""
    if name.startswith("hf-hub:"):
        if not settings.allow_hf_hub:
            raise LimitError(
                "model_not_allowed",
                f"model {name!r}: Hugging Face Hub models are not enabled on this service (SAFT_ALLOW_HF_HUB)",
            )
        return
    # open_clip's registry imports torch: loaded here, on the first check, so that modules which only import this
    # one (the dataset routes, the upload check) stay free of it
    from saft_core.models import is_architecture, pretrained_tags

    tags = pretrained_tags(name)
    if not tags and not is_architecture(name):
        raise LimitError("unknown_model", f"model {name!r} is not a known model; see GET /v1/models")
    if pretrained is None or pretrained in _NO_WEIGHTS or pretrained in tags or _models_file(pretrained, settings) is not None:
        return
    where = " or a file in the service's models folder" if settings.models_dir is not None else ""
    raise LimitError(
        "model_not_allowed",
        f"pretrained {pretrained[:100]!r} is not a pretrained tag of {name!r}{where}; see GET /v1/models",
    )


def resolve_pretrained(pretrained: str | None, settings: Settings) -> str | None:
    """What the core should load: a models-folder name becomes its absolute path; tags stay as they are."""
    if pretrained in _NO_WEIGHTS or pretrained is None:
        return pretrained
    path = _models_file(pretrained, settings)
    return str(path) if path is not None else pretrained

