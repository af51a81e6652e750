"""Loading CLIP models through open_clip's own factory, and fingerprinting their weights.

A model is named by an open_clip architecture plus a pretrained tag (``ViT-B-16`` + ``openai``), by an
``hf-hub:org/repo`` name, or by an architecture plus a local weights file. The project's own architectures
(``saft-tiny``) live as open_clip JSON configs in ``model_configs/`` and are registered on import.
``pretrained=None`` gives a seeded random init, which needs no download (tests use it).

Weights that are neither on disk nor reachable fail fast with a ModelError instead of open_clip's minute of
download retries.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from .config import DEFAULT_MODEL, DEFAULT_PRETRAINED, DEFAULT_TAGS, ModelSpec
from .errors import ModelError

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"
# Weights that ship with the package: (architecture, tag) -> file. open_clip's registry has no public way to
# add a tag that points at a local file, so the tag is translated to the path here.
BUNDLED_WEIGHTS: dict[tuple[str, str], Path] = {
    (DEFAULT_MODEL, "world"): WEIGHTS_DIR / "saft-tiny-world.safetensors",
}
HF_HOST = "huggingface.co"
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

open_clip.add_model_config(MODEL_CONFIG_DIR)

__all__ = [
    "LoadedModel",
    "available_models",
    "is_architecture",
    "load_model",
    "parameter_count",
    "pretrained_tags",
    "resolve_device",
    "weights_sha256",
]


@dataclass
class LoadedModel:
    """A CLIP model with its preprocessing and tokenizer. ``sha256`` fingerprints the base weights."""

    model: torch.nn.Module
    preprocess_train: Callable[[Any], torch.Tensor]
    preprocess_eval: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    spec: ModelSpec
    sha256: str
    device: torch.device


def resolve_device(device: str | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or None (CUDA when available). Touches CUDA only when asked for or auto."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was requested but no CUDA device is available")
    return dev


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the state dict: for each key in sorted order, its name, dtype, shape and raw bytes.

    Independent of device; two models hash equal iff their weights are bitwise equal.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _is_hf_hub(name: str) -> bool:
    return name.startswith("hf-hub:")


def _host_reachable(host: str = HF_HOST, timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _in_hf_cache(hf_hub: str, filenames: tuple[str, ...]) -> bool:
    """Whether any of ``filenames`` of the hub repo is in the local cache. ``hf_hub`` may name the file
    itself (``org/repo/file.bin``), as some of open_clip's pretrained entries do."""
    from huggingface_hub import try_to_load_from_cache

    parts = hf_hub.strip("/").split("/")
    repo_id = "/".join(parts[:2])
    if len(parts) > 2:
        filenames = ("/".join(parts[2:]),)
    try:
        return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in filenames)
    except ValueError:  # malformed repo id in a registry entry: treat as not cached
        return False


def _check_weights_available(spec: ModelSpec, cache_dir: str | None) -> None:
    """Raise ModelError quickly when the weights are neither on disk nor downloadable."""
    name, tag = spec.name, spec.pretrained
    if _is_hf_hub(name):
        repo = name.removeprefix("hf-hub:")
        if _in_hf_cache(repo, ("open_clip_config.json",)) or _host_reachable():
            return
        raise ModelError(
            f"model {name!r} is not in the local Hugging Face cache and {HF_HOST} cannot be reached; "
            "download it where there is network (or copy the cache, HF_HOME) and try again"
        )
    if name not in open_clip.list_models():
        raise ModelError(
            f"unknown model {name!r}; use an open_clip architecture (e.g. ViT-B-16, {DEFAULT_MODEL}) "
            "or an 'hf-hub:org/repo' name"
        )
    if tag is None or os.path.isfile(tag):
        return
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        hint = f"known tags: {', '.join(tags)}" if tags else "it has no pretrained tags"
        raise ModelError(
            f"unknown pretrained tag {tag!r} for model {name!r} ({hint}); or pass a local weights file path"
        )
    repo = cfg.get("hf_hub", "").strip("/")
    if repo and _in_hf_cache(repo, _WEIGHT_FILES):
        return
    url = cfg.get("url", "")
    if url and cache_dir and (Path(cache_dir) / os.path.basename(url)).is_file():
        return
    if _host_reachable():
        return
    raise ModelError(
        f"weights for {name!r} / {tag!r} are not on disk and cannot be downloaded (no network); "
        "download them where there is network and pass the file path as pretrained, or copy the "
        "Hugging Face cache (HF_HOME)"
    )


def resolve_default(spec: ModelSpec) -> ModelSpec:
    """Replace the tag 'default' by the model's default: ``DEFAULT_TAGS``, else open_clip's first tag, else
    a random init (an hf-hub model carries its own weights)."""
    if spec.pretrained != DEFAULT_PRETRAINED:
        return spec
    tag = DEFAULT_TAGS.get(spec.name)
    if tag is None and not _is_hf_hub(spec.name) and spec.name in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        tag = tags[0] if tags else None
    return ModelSpec(spec.name, tag, spec.init_seed)


def _bundled(spec: ModelSpec) -> ModelSpec:
    """Translate a bundled tag (``saft-tiny`` / ``world``) into the path of the file that ships with us."""
    path = BUNDLED_WEIGHTS.get((spec.name, spec.pretrained or ""))
    if path is None:
        return spec
    if not path.is_file():
        raise ModelError(f"the bundled weights for {spec.name!r} / {spec.pretrained!r} are missing ({path.name}); "
                         "reinstall the package or train them with scripts/train_saft_tiny.py")
    return ModelSpec(spec.name, str(path), spec.init_seed)


def load_model(spec: ModelSpec, device: str | torch.device | None = None, *, cache_dir: str | None = None) -> LoadedModel:
    """Create the model, its transforms and tokenizer; move it to ``device``; fingerprint the weights.

    ``LoadedModel.spec`` is the spec as asked for (a bundled tag stays a tag, not a path)."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    asked = spec = resolve_default(spec)
    spec = _bundled(spec)
    _check_weights_available(spec, cache_dir)
    if spec.pretrained is None and not _is_hf_hub(spec.name):
        torch.manual_seed(spec.init_seed)  # seeded random init: reproducible without weights
    try:
        model, pre_train, pre_eval = open_clip.create_model_and_transforms(
            spec.name, pretrained=spec.pretrained, device=dev, cache_dir=cache_dir
        )
        tokenizer = open_clip.get_tokenizer(spec.name, cache_dir=cache_dir)
    except ModelError:
        raise
    except (RuntimeError, ValueError, OSError, KeyError, EOFError, pickle.UnpicklingError) as e:  # not weights
        raise ModelError(f"cannot load model {spec.name!r} with pretrained {spec.pretrained!r}: {e}") from e
    model.eval()
    return LoadedModel(model, pre_train, pre_eval, tokenizer, asked, weights_sha256(model), dev)


@functools.lru_cache(maxsize=256)
def parameter_count(name: str) -> int | None:
    """Parameters of architecture ``name``, counted on torch's meta device: no memory is allocated and no
    weights are read, so it costs milliseconds (ViT-L-14: 40 ms).
    None when it is not known without a download (an ``hf-hub:`` model, a Hugging Face text tower) or the
    architecture is unknown."""
    if _is_hf_hub(name) or not is_architecture(name):
        return None
    config = open_clip.get_model_config(name) or {}
    if config.get("text_cfg", {}).get("hf_model_name"):
        return None
    try:
        with torch.device("meta"):  # every tensor created without storage (also what open_clip makes itself)
            model = open_clip.create_model(name, pretrained=None, device="meta")
    except (RuntimeError, ValueError, OSError, KeyError, NotImplementedError) as e:
        log.warning("cannot count the parameters of %s: %s", name, e)
        return None
    return sum(p.numel() for p in model.parameters())


def is_architecture(name: str) -> bool:
    """Whether ``name`` is an architecture open_clip can create (the project's own included)."""
    return name in open_clip.list_models()


def pretrained_tags(name: str) -> list[str]:
    """The pretrained tags of architecture ``name``: bundled ones first, then open_clip's ([] if unknown)."""
    if name not in open_clip.list_models():
        return []
    bundled = [tag for (arch, tag), path in BUNDLED_WEIGHTS.items() if arch == name and path.is_file()]
    return bundled + list(open_clip.list_pretrained_tags_by_model(name))


def available_models() -> list[dict[str, Any]]:
    """Architectures open_clip knows, with their pretrained tags; ``local`` says whether the model can be
    created offline (random init always can; listed tags only when cached)."""
    out = []
    for name in open_clip.list_models():
        bundled = [tag for (arch, tag), path in BUNDLED_WEIGHTS.items() if arch == name and path.is_file()]
        tags = bundled + list(open_clip.list_pretrained_tags_by_model(name))
        cached = list(bundled)
        for tag in tags[len(bundled):]:
            repo = open_clip.get_pretrained_cfg(name, tag).get("hf_hub", "").strip("/")
            if repo and _in_hf_cache(repo, _WEIGHT_FILES):
                cached.append(tag)
        out.append({"name": name, "pretrained": tags, "cached_pretrained": cached, "local": name == DEFAULT_MODEL})
    return out
