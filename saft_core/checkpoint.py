"""Sparse delta checkpoints and mask files (safetensors), written atomically.

Delta file: for every parameter tensor P with selected entries, ``P:idx`` (int64, ascending flat indices into
P) and ``P:delta`` (float32, fine-tuned minus pre-trained value at those indices). Header metadata (str->str):
``format=saft-sparse-delta``, ``format_version``, ``base_model``, ``pretrained``, ``base_sha256``, ``ratio``,
``k``, ``classes`` (JSON list), ``templates`` (JSON list), ``created_at`` (ISO 8601, UTC); when the run had a
validation split, ``recommended_alpha`` and ``alpha_rule`` (the rule that chose it, see frontier.py).
Applying it: ``P.view(-1)[idx] += alpha * delta``; alpha=1 is the fine-tuned model, 0 the base.

Extension for the full fine-tuning baseline: a ``P:delta`` without ``P:idx`` is a dense delta of P's shape
(``method=full``), so WiSE-FT interpolation is the same ``alpha`` for both methods.

Mask file: the same ``P:idx`` keys without deltas, ``format=saft-mask``.

Every file these writers produce (delta, mask, merged weights) is stamped with its writer: ``saft_version`` (this
project's distribution) and ``open_clip_version``, as PEFT stamps its version into every adapter. Files written
before the stamps load as before; ``SparseDelta.written_by`` is then empty.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .config import ModelSpec
from .errors import CheckpointError
from .frontier import RULE

DELTA_FORMAT = "saft-sparse-delta"
MASK_FORMAT = "saft-mask"
FORMAT_VERSION = "1"
IDX, DELTA = ":idx", ":delta"

Deltas = dict[str, tuple[torch.Tensor | None, torch.Tensor]]

# The distributions whose versions stamp every file written here, and the metadata key of each.
WRITER_KEYS = {"saft-service": "saft_version", "open_clip_torch": "open_clip_version"}
UNKNOWN_VERSION = "unknown"


@cache
def writer_versions() -> dict[str, str]:
    """``{"saft_version": ..., "open_clip_version": ...}`` of this process, from the installed distributions.

    Run from a source tree that was never installed, saft's version is the package's own ``__version__``; an
    open_clip without distribution metadata (vendored, say) is ``unknown``."""
    stamps = {}
    for distribution, key in WRITER_KEYS.items():
        try:
            stamps[key] = version(distribution)
        except PackageNotFoundError:
            stamps[key] = __version__ if key == "saft_version" else UNKNOWN_VERSION
    return stamps


def checkpoint_metadata(
    *,
    base_model: str,
    pretrained: str | None,
    base_sha256: str,
    ratio: float | None,
    k: int,
    classes: list[str],
    templates: list[str],
    method: str = "saft",
    init_seed: int = 0,
    recommended_alpha: float | None = None,
) -> dict[str, str]:
    """The header metadata of a delta (or mask) file; every value is a string, as safetensors requires."""
    recommendation = {} if recommended_alpha is None else {
        "recommended_alpha": repr(float(recommended_alpha)), "alpha_rule": RULE,
    }
    return {
        "format_version": FORMAT_VERSION,
        "base_model": base_model,
        "pretrained": pretrained or "none",
        "base_sha256": base_sha256,
        "ratio": "1.0" if ratio is None else repr(float(ratio)),
        "k": str(int(k)),
        "classes": json.dumps(list(classes)),
        "templates": json.dumps(list(templates)),
        "method": method,
        # a random-init base (pretrained none) is only reproducible with its seed
        **({"init_seed": str(init_seed)} if pretrained is None else {}),
        **recommendation,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename: readers never see a partial file.

    The writer's stamps (``writer_versions``) replace any the caller passed, e.g. in metadata copied from an
    older file: a stamp names the code that wrote this file."""
    metadata = {**metadata, **writer_versions()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_delta(path: str | Path, deltas: Deltas, metadata: Mapping[str, str]) -> Path:
    """Write a delta file. ``deltas``: {name: (ascending int64 idx or None for dense, fp32 delta)}."""
    tensors: dict[str, torch.Tensor] = {}
    for name, (idx, delta) in deltas.items():
        if idx is not None:
            if idx.numel() != delta.numel():
                raise CheckpointError(f"{name}: {idx.numel()} indices but {delta.numel()} deltas")
            tensors[name + IDX] = idx.to(torch.int64).cpu()
            tensors[name + DELTA] = delta.reshape(-1).to(torch.float32).cpu()
        else:
            tensors[name + DELTA] = delta.to(torch.float32).cpu()
    _atomic_save(tensors, Path(path), {**metadata, "format": DELTA_FORMAT})
    return Path(path)


def save_mask(path: str | Path, indices: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    tensors = {name + IDX: idx.to(torch.int64).cpu() for name, idx in indices.items()}
    _atomic_save(tensors, Path(path), {**metadata, "format": MASK_FORMAT})
    return Path(path)


def save_weights(path: str | Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Write a plain (merged) state dict atomically; open_clip loads it as ``pretrained=path``."""
    _atomic_save(dict(state), Path(path), dict(metadata))
    return Path(path)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a delta or mask file, without reading the tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e


@dataclass
class SparseDelta:
    """A loaded delta file: {name: (idx or None, delta)} plus its metadata."""

    tensors: Deltas
    metadata: dict[str, str]

    @property
    def classes(self) -> list[str]:
        return json.loads(self.metadata.get("classes", "[]"))

    @property
    def templates(self) -> list[str]:
        return json.loads(self.metadata.get("templates", "[]"))

    def base_spec(self) -> ModelSpec:
        """The base model this delta was made for, as recorded in its metadata."""
        pre = self.metadata.get("pretrained", "none")
        return ModelSpec(self.metadata.get("base_model", ""), None if pre == "none" else pre,
                         init_seed=int(self.metadata.get("init_seed", "0")))

    @property
    def recommended_alpha(self) -> float | None:
        """The alpha the run recommended on its validation split; None when it had none."""
        value = self.metadata.get("recommended_alpha")
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            raise CheckpointError(f"the checkpoint's recommended_alpha is not a number: {value[:40]!r}") from None

    @property
    def written_by(self) -> dict[str, str]:
        """The versions that wrote the file (``saft_version``, ``open_clip_version``); empty for a file written
        before the stamps."""
        return {key: self.metadata[key] for key in WRITER_KEYS.values() if key in self.metadata}

    @property
    def num_entries(self) -> int:
        return sum(d.numel() for _, d in self.tensors.values())


def load_delta(path: str | Path) -> SparseDelta:
    """Read and validate a delta file (format, pairs of keys, dtypes, ascending unique indices)."""
    meta = read_metadata(path)
    if meta.get("format") != DELTA_FORMAT:
        raise CheckpointError(f"{path} is not a SAFT delta checkpoint (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {meta.get('format_version')!r}; this version reads {FORMAT_VERSION}"
        )
    with safe_open(str(path), framework="pt") as f:
        raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
    tensors: Deltas = {}
    for key, value in raw.items():
        if key.endswith(IDX):
            continue
        if not key.endswith(DELTA):
            raise CheckpointError(f"{path}: unexpected tensor {key!r}")
        name = key[: -len(DELTA)]
        idx = raw.get(name + IDX)
        if value.dtype != torch.float32:
            raise CheckpointError(f"{path}: {key} must be float32, is {value.dtype}")
        if idx is not None:
            if idx.dtype != torch.int64 or idx.dim() != 1 or idx.numel() != value.numel():
                raise CheckpointError(f"{path}: {name}{IDX} must be int64 [n] matching {key}")
            if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
                raise CheckpointError(f"{path}: {name}{IDX} is not strictly ascending")
        tensors[name] = (idx, value)
    orphans = [k for k in raw if k.endswith(IDX) and k[: -len(IDX)] not in tensors]
    if orphans:
        raise CheckpointError(f"{path}: index tensors without deltas: {orphans[:3]}")
    return SparseDelta(tensors, meta)


def load_mask(path: str | Path) -> dict[str, torch.Tensor]:
    meta = read_metadata(path)
    if meta.get("format") != MASK_FORMAT:
        raise CheckpointError(f"{path} is not a SAFT mask file (format={meta.get('format')!r})")
    with safe_open(str(path), framework="pt") as f:
        return {k[: -len(IDX)]: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


@torch.no_grad()
def apply_delta(
    model: torch.nn.Module,
    delta: SparseDelta,
    *,
    alpha: float = 1.0,
    base_sha256: str | None = None,
) -> None:
    """Add ``alpha * delta`` to ``model``'s parameters in place.

    ``base_sha256`` is the fingerprint of ``model``'s current weights (``models.weights_sha256``); when given,
    a checkpoint made for other weights is refused before anything is changed.
    """
    expected = delta.metadata.get("base_sha256")
    if base_sha256 is not None and expected and expected != base_sha256:
        raise CheckpointError(
            "checkpoint was made for other base weights: "
            f"it expects {delta.metadata.get('base_model')!r} / {delta.metadata.get('pretrained')!r} "
            f"(sha256 {expected[:12]}...), the given model has sha256 {base_sha256[:12]}..."
        )
    params = dict(model.named_parameters())
    # Validate everything first so a bad file changes nothing.
    for name, (idx, d) in delta.tensors.items():
        if name not in params:
            raise CheckpointError(f"checkpoint has a delta for {name!r}, which the model does not have")
        p = params[name]
        if idx is None and d.shape != p.shape:
            raise CheckpointError(f"{name}: dense delta of shape {tuple(d.shape)} for a {tuple(p.shape)} tensor")
        if idx is not None and idx.numel() and int(idx[-1]) >= p.numel():
            raise CheckpointError(f"{name}: index {int(idx[-1])} out of range for {p.numel()} entries")
    for name, (idx, d) in delta.tensors.items():
        p = params[name]
        update = (alpha * d.to(p.device)).to(p.dtype)
        if idx is None:
            p.add_(update)
        else:
            p.view(-1).index_add_(0, idx.to(p.device), update)
