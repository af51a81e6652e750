"""The sparse gradient engine against the dense reference: same gradients at the mask, same training."""

from __future__ import annotations

import copy
import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F

from saft_core import sparse_grad
from saft_core.config import ModelSpec, TrainConfig
from saft_core.data import make_loader
from saft_core.datasets import load_dataset
from saft_core.masking import Mask, select_topk
from saft_core.models import load_model
from saft_core.sparse_grad import SparseGradEngine, entry_grads, make_plan
from saft_core.training import SparseUpdate, train
from saft_core.zeroshot import Prompts, clip_logits

CLASSES = ["cat", "dog", "car"]


def _model(name: str) -> tuple[torch.nn.Module, Prompts]:
    """A random-init model at 64 px (the project's saft-tiny, or an open_clip shape)."""
    if name == "saft-tiny":
        loaded = load_model(ModelSpec(name, None), "cpu")
        model, tok = loaded.model, loaded.tokenizer
    else:
        torch.manual_seed(0)
        model, tok = open_clip.create_model(name, force_image_size=64), open_clip.get_tokenizer(name)
    model.train()
    return model, Prompts.build(tok, CLASSES, ["a photo of a {}."], "cpu")


def _random_mask(model: torch.nn.Module, ratio: float, seed: int = 0) -> Mask:
    """Top-k of random scores: a mask spread over every tensor, so every path of the engine runs."""
    g = torch.Generator().manual_seed(seed)
    return select_topk({n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}, ratio)


def _mask_grads(model, prompts, mask, engine: str, images, labels):
    update = SparseUpdate(model, mask, engine)
    with update.forward_context():
        loss = F.cross_entropy(clip_logits(model, images, prompts.head(model)), labels)
    loss.backward()
    update.after_backward()
    if engine == "sparse":
        assert all(p.grad is None for p in model.parameters())
    grads = {n: d.grad.clone() for n, d in update.delta.items()}
    model.zero_grad(set_to_none=True)
    return grads, update.engine


def _assert_same_grads(dense: dict[str, torch.Tensor], sparse: dict[str, torch.Tensor]) -> None:
    assert dense.keys() == sparse.keys()
    # Entries whose true gradient is 0 (e.g. attention's key bias) come out as float noise on both paths, so
    # the absolute tolerance follows the scale of the whole gradient.
    scale = max(float(g.abs().max()) for g in dense.values())
    for n in dense:
        torch.testing.assert_close(sparse[n], dense[n], rtol=1e-3, atol=1e-5 * scale, msg=lambda m, n=n: f"{n}: {m}")


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[torch.nn.Module, Prompts]]:
    """Models built once per module, by name; tests work on copies (``_copy_of``)."""
    return {}


def _copy_of(models, name):
    """A private copy of the named model: what a test does to it cannot reach the next test."""
    if name not in models:
        models[name] = _model(name)
    model, prompts = models[name]
    return copy.deepcopy(model), prompts


def _mask_of(models, name: str, model: torch.nn.Module, ratio: float) -> Mask:
    """``_random_mask`` of the named model, drawn once per module (seconds for a full-size model)."""
    key = ("mask", name, ratio)
    if key not in models:
        models[key] = _random_mask(model, ratio)
    return models[key]


@pytest.mark.parametrize(("name", "ratio"), [
    ("saft-tiny", 1e-4), ("saft-tiny", 1e-3), ("saft-tiny", 1e-1),
    # full-size architectures (at 64 px): every path of the engine on real shapes, in seconds each
    pytest.param("ViT-B-32", 1e-3, marks=pytest.mark.slow), pytest.param("RN50", 1e-3, marks=pytest.mark.slow),
])
def test_sparse_gradient_at_the_mask_equals_the_dense_one(models, name, ratio, caplog):
    model, prompts = _copy_of(models, name)
    mask = _mask_of(models, name, model, ratio)
    torch.manual_seed(1)
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    dense, _ = _mask_grads(model, prompts, mask, "dense", images, labels)
    with caplog.at_level(logging.WARNING, logger="saft_core.sparse_grad"):
        sparse, engine = _mask_grads(model, prompts, mask, "sparse", images, labels)
    assert len(dense) == len(mask.indices) and sum(g.numel() for g in dense.values()) == mask.k
    assert sum(float(g.abs().sum()) > 0 for g in dense.values()) > len(dense) // 2  # a real gradient, not zeros
    _assert_same_grads(dense, sparse)
    if name == "ViT-B-32":  # every weight of a ViT has a known path; none falls back
        assert engine.fallbacks == {}
        assert engine.paths["visual.conv1.weight"] == "gathered products (linear)"  # patch embedding
        assert engine.paths["visual.proj"] == "gathered products (matmul)"
        assert engine.paths["token_embedding.weight"] == "embedding rows"
        assert engine.paths["transformer.resblocks.0.attn.in_proj_weight"] == "gathered products (linear)"
    if name == "RN50":  # a 3x3 convolution takes the dense gradient, and the run says so
        assert "visual.layer1.0.conv2.weight" in engine.fallbacks
        assert "visual.layer1.0.conv2.weight" in caplog.text
        assert not any(n.startswith("transformer.") for n in engine.fallbacks)  # its text tower is a ViT's


def _relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all tensors together."""
    diff = sum(float((a[n] - b[n]).square().sum()) for n in b)
    return (diff / sum(float(t.square().sum()) for t in b.values())) ** 0.5


# Tolerance of the sparse engine's entry gradients under bf16 autocast against autograd's (the dense engine) under
# the same autocast: 5 % relative error over all entries together, and no less accurate than autograd in bf16 when
# both are measured against the fp32 gradient. Both bf16 paths sit a few % from fp32 (bf16 keeps 8 bits of
# mantissa); they differ from each other by where they round: the gathered products sum in fp32, autograd's
# GEMM rounds its [out, in] result to bf16.
BF16_RTOL = 0.05


@pytest.mark.parametrize(("name", "ratio"), [
    ("saft-tiny", 1e-3), ("saft-tiny", 1e-1),  # gathered products, and the row GEMM (high density)
    pytest.param("ViT-B-32", 1e-3, marks=pytest.mark.slow),
])
def test_bf16_autocast_entry_gradients_agree_with_the_dense_engine(models, name, ratio):
    """The code CUDA runs (bf16 autocast), run on the CPU: CI checks the engine's dtypes on every change."""
    model, prompts = _copy_of(models, name)
    mask = _mask_of(models, name, model, ratio)
    torch.manual_seed(1)
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    fp32, _ = _mask_grads(model, prompts, mask, "dense", images, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # backward inside the block too: the engine must not care
        dense, _ = _mask_grads(model, prompts, mask, "dense", images, labels)
        sparse, engine = _mask_grads(model, prompts, mask, "sparse", images, labels)
    assert all(g.dtype == torch.float32 for g in sparse.values())
    if ratio >= 0.1:
        assert any(p.startswith("GEMM") for p in engine.paths.values())  # the bf16 GEMM path ran
    assert _relative_error(dense, fp32) > 1e-4  # autocast really ran in bf16
    assert _relative_error(sparse, dense) < BF16_RTOL
    assert _relative_error(sparse, fp32) <= 1.25 * _relative_error(dense, fp32) + 1e-3


@pytest.mark.parametrize("ratio", [1e-3, 1e-1])
def test_training_gives_the_same_deltas_and_leaves_the_rest_untouched(shapes_dir, ratio):
    ds = load_dataset(shapes_dir)
    deltas = {}
    for engine in ("dense", "sparse"):
        loaded = load_model(ModelSpec("saft-tiny", None), "cpu")
        before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
        mask = _random_mask(loaded.model, ratio)
        prompts = Prompts.build(loaded.tokenizer, ds.class_names, ["a photo of a {}."], "cpu")
        update = SparseUpdate(loaded.model, mask, engine)
        cfg = TrainConfig(epochs=1, batch_size=8, learning_rate=1e-2, grad_engine=engine)
        train(loaded.model, make_loader(ds, loaded.preprocess_eval, 8, shuffle=True), prompts, update, cfg,
              device=loaded.device)
        deltas[engine] = {n: d for n, (_, d) in update.deltas().items()}
        mask_indices = mask.indices
        for n, p in loaded.model.named_parameters():
            assert p.grad is None or engine == "dense"
            outside = torch.ones(p.numel(), dtype=torch.bool)
            if n in mask.indices:
                outside[mask.indices[n]] = False
            assert torch.equal(p.detach().reshape(-1)[outside], before[n].reshape(-1)[outside])  # bitwise
    assert sum(float(d.abs().sum()) > 0 for d in deltas["dense"].values()) > 0
    # The key bias of attention has a true gradient of exactly 0 (softmax ignores a per-query constant); both
    # engines give float noise there, which Adam scales up to steps of ~lr. Those entries are compared for
    # staying within Adam's bound, the others closely.
    close = total = 0
    for n, d in deltas["dense"].items():
        keep = torch.ones_like(d, dtype=torch.bool)
        if n.endswith("attn.in_proj_bias"):
            width = loaded.model.state_dict()[n].numel() // 3
            idx = mask_indices[n]
            keep = (idx < width) | (idx >= 2 * width)
            assert all(float(v.abs()) <= 3 * cfg.learning_rate for v in deltas["sparse"][n][~keep])
        # Adam normalises each entry's gradient, so where a gradient is tiny the summation-order noise of the
        # two engines shows in the step: every entry within 5 % of one step (lr), nearly all within 1e-5
        diff = (deltas["sparse"][n][keep] - d[keep]).abs()
        assert float(torch.cat([diff, diff.new_zeros(1)]).max()) <= 0.05 * cfg.learning_rate, n
        close += int((diff <= 1e-5 + 1e-3 * d[keep].abs()).sum())
        total += int(keep.sum())
    assert close >= 0.999 * total


def _mha_masks(length: int, batch: int) -> list[dict]:
    causal = torch.full((length, length), float("-inf")).triu_(1)  # open_clip's text mask
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[0, -2:] = True
    return [{}, {"attn_mask": causal}, {"attn_mask": causal.isinf()}, {"attn_mask": causal, "is_causal": True},
            {"key_padding_mask": pad}, {"attn_mask": causal, "key_padding_mask": pad}]


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_replacement_gives_the_modules_outputs(batch_first):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first).train()
    params = dict(mha.named_parameters())
    idx = {n: torch.tensor([0, 7, params[n].numel() - 1]) for n in ("in_proj_weight", "out_proj.weight")}
    for p in params.values():
        p.requires_grad_(False)
    length, batch = 6, 3
    for kwargs in _mha_masks(length, batch):
        x = torch.randn((batch, length, 32) if batch_first else (length, batch, 32), requires_grad=True)
        ref, _ = mha(x, x, x, need_weights=False, **kwargs)
        (gx_ref,) = torch.autograd.grad(ref.square().sum(), x)
        delta = {n: torch.zeros(3, requires_grad=True) for n in idx}
        engine = SparseGradEngine(params, idx, delta)
        with engine:
            out, _ = mha(x, x, x, need_weights=False, **kwargs)
        # the replacement ran (no dense gather of the whole attention call)
        assert engine.paths["in_proj_weight"].endswith("(linear)"), (kwargs, engine.paths)
        torch.testing.assert_close(out, ref, msg=lambda m, k=kwargs: f"{sorted(k)}: {m}")
        (gx,) = torch.autograd.grad(out.square().sum(), x)
        torch.testing.assert_close(gx, gx_ref)


@pytest.mark.parametrize("dense", [False, True])
def test_entry_gradients_match_the_gemm_in_small_chunks(monkeypatch, dense):
    monkeypatch.setattr(sparse_grad, "CHUNK_BYTES", 4096)  # many chunks
    torch.manual_seed(0)
    g, x = torch.randn(50, 20), torch.randn(50, 30)
    full = g.T @ x  # [20, 30]: the dense weight gradient of a linear layer
    idx = torch.randperm(600)[:97].sort().values
    plan = make_plan(idx // 30, idx % 30, 30, device_type="cpu", dense=dense)
    torch.testing.assert_close(entry_grads(g, x, plan), full.reshape(-1)[idx])


def test_crossover_picks_the_gemm_at_high_density():
    idx = torch.arange(0, 64 * 64, 2)  # half the entries
    assert make_plan(idx // 64, idx % 64, 64, device_type="cpu").dense
    assert not make_plan(torch.tensor([3]), torch.tensor([5]), 64, device_type="cpu").dense
