import contextlib

import pytest
import torch

from benchmarks.shift import LoraUpdate
from saft_core.checkpoint import SparseDelta, apply_delta
from saft_core.config import SaftConfig, TrainConfig
from saft_core.data import make_loader
from saft_core.datasets import load_dataset
from saft_core.errors import Cancelled
from saft_core.masking import Mask, select_topk
from saft_core.models import load_model
from saft_core.results import Callbacks
from saft_core.scoring import eligible_parameters, score_parameters
from saft_core.snapshot import Snapshots
from saft_core.training import DenseUpdate, ResumableUpdate, SparseUpdate, Update, train, warmup_cosine
from saft_core.zeroshot import Prompts, build_head
from tests.fixtures.model import tiny_config


@pytest.fixture
def setup(shapes_dir, saft_tiny):
    """The run's config, a private copy of saft-tiny (tests train it), the dataset and its prompts."""
    cfg = tiny_config(shapes_dir)
    ds = load_dataset(shapes_dir)
    prompts = Prompts.build(saft_tiny.tokenizer, ds.class_names, cfg.data.templates, "cpu")
    return cfg, saft_tiny, ds, prompts


@pytest.mark.parametrize("grad_engine", ["sparse", "dense"])
def test_optimizer_state_exists_only_for_selected_entries(setup, grad_engine):
    cfg, loaded, ds, prompts = setup
    scores = score_parameters(loaded.model, make_loader(ds, loaded.preprocess_eval, 8), prompts, cfg.method,
                              device=loaded.device)
    mask = select_topk(scores, 0.001)
    update = SparseUpdate(loaded.model, mask, grad_engine)
    opt = torch.optim.AdamW(update.trainable(), lr=1e-3)
    assert sum(t.numel() for t in update.trainable()) == mask.k
    images, labels = next(iter(make_loader(ds, loaded.preprocess_eval, 8)))
    with update.forward_context():
        loss = torch.nn.functional.cross_entropy(
            loaded.model.logit_scale.exp() * loaded.model.encode_image(images, normalize=True)
            @ prompts.head(loaded.model), labels)
    loss.backward()
    update.after_backward()
    opt.step()
    state_entries = sum(s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in opt.state.values())
    assert state_entries == 2 * mask.k
    assert all(p.grad is None for p in loaded.model.parameters())  # dense gradients were dropped


def test_gradients_are_masked_before_clipping(setup):
    """With a tiny clip norm the update must equal clipping of the *masked* gradient, not of the dense one."""
    cfg, loaded, ds, prompts = setup
    params = dict(loaded.model.named_parameters())
    name = "visual.proj"
    idx = torch.tensor([0, 5, 17])
    mask = Mask(indices={name: idx}, numel={name: params[name].numel()}, k=3, ratio=0.5)
    update = SparseUpdate(loaded.model, mask, "dense")  # reads the dense gradient that the dense engine builds
    images, labels = next(iter(make_loader(ds, loaded.preprocess_eval, 8)))
    logits = loaded.model.logit_scale.exp() * loaded.model.encode_image(images, normalize=True) @ prompts.head(loaded.model)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    dense = params[name].grad.detach().clone()
    update.after_backward()
    norm = torch.nn.utils.clip_grad_norm_(update.trainable(), 1e-6)
    torch.testing.assert_close(norm, dense.reshape(-1)[idx].norm())
    assert dense.norm() > norm  # the dense norm would have clipped differently


def test_progress_and_cancellation(setup):
    cfg, loaded, ds, prompts = setup
    mask = Mask(indices={"visual.proj": torch.tensor([1, 2])}, numel={"visual.proj": 16384}, k=2, ratio=0.1)
    update = SparseUpdate(loaded.model, mask)
    seen = []
    loader = make_loader(ds, loaded.preprocess_eval, 8, shuffle=True)
    stats = train(loaded.model, loader, prompts, update, TrainConfig(epochs=2, batch_size=8, warmup_steps=2),
                  device=loaded.device, callbacks=Callbacks(on_progress=seen.append))
    assert stats.steps == 6 and [p.step for p in seen] == [1, 2, 3, 4, 5, 6]
    assert all(p.total == 6 and p.loss is not None for p in seen)
    assert seen[0].lr == pytest.approx(0.5e-3) and seen[1].lr == pytest.approx(1e-3)  # warm-up
    with pytest.raises(Cancelled):
        train(loaded.model, loader, prompts, update, TrainConfig(epochs=1, batch_size=8), device=loaded.device,
              callbacks=Callbacks(should_cancel=lambda: len(seen) >= 8, on_progress=seen.append))
    assert len(seen) == 8


def test_saft_full_and_lora_implement_the_update_protocol():
    assert issubclass(SparseUpdate, ResumableUpdate) and issubclass(DenseUpdate, ResumableUpdate)
    assert issubclass(LoraUpdate, Update)
    assert not issubclass(LoraUpdate, ResumableUpdate)  # the benchmark never snapshots its LoRA runs
    assert not issubclass(Mask, Update)


class LogitScaleOnly:
    """The smallest method: train the logit scale alone, counting what the loop calls."""

    def __init__(self, model: torch.nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(False)
        self.scale = model.logit_scale.requires_grad_(True)
        self.calls = {"forward_context": 0, "after_backward": 0, "after_step": 0}

    def trainable(self) -> list[torch.Tensor]:
        return [self.scale]

    def forward_context(self) -> contextlib.AbstractContextManager:
        self.calls["forward_context"] += 1
        return contextlib.nullcontext()

    def after_backward(self) -> None:
        self.calls["after_backward"] += 1
        assert self.scale.grad is not None  # ready for clipping

    def after_step(self) -> None:
        self.calls["after_step"] += 1


def test_train_drives_any_update_through_the_protocol(setup, tmp_path):
    cfg, loaded, ds, prompts = setup  # a private copy of the model: this test changes what trains
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    update = LogitScaleOnly(loaded.model)
    assert isinstance(update, Update) and not isinstance(update, ResumableUpdate)
    loader = make_loader(ds, loaded.preprocess_eval, 8, shuffle=True)
    stats = train(loaded.model, loader, prompts, update, TrainConfig(epochs=1, batch_size=8, learning_rate=0.1),
                  device=loaded.device)
    assert stats.steps == 3 and update.calls == dict.fromkeys(update.calls, 3)
    changed = {n for n, p in loaded.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"logit_scale"}
    with pytest.raises(TypeError, match="LogitScaleOnly has no state"):  # snapshots need the trainable state
        train(loaded.model, loader, prompts, update, TrainConfig(epochs=1), device=loaded.device,
              snapshots=Snapshots(tmp_path, "run", 0.0))
    assert update.calls["after_step"] == 3  # refused before any step


def test_warmup_cosine_schedule():
    f = warmup_cosine(2, 10)
    assert [round(f(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]


def test_scoring_reductions_and_eligibility(setup):
    cfg, loaded, ds, prompts = setup
    loader = make_loader(ds, loaded.preprocess_eval, 8)
    flags = [p.requires_grad for p in loaded.model.parameters()]
    abs_ = score_parameters(loaded.model, loader, prompts, SaftConfig(scoring_batch_size=8), device=loaded.device)
    abs_sum = score_parameters(loaded.model, loader, prompts,
                               SaftConfig(scoring_batch_size=8, score_reduction="abs_sum"), device=loaded.device)
    sq = score_parameters(loaded.model, loader, prompts,
                          SaftConfig(scoring_batch_size=8, score_reduction="squared"), device=loaded.device)
    for n in abs_:
        assert bool((abs_sum[n] <= abs_[n] * (1 + 1e-5) + 1e-12).all())  # |sum g| <= sum |g|
        assert bool((sq[n] <= abs_[n] ** 2 * (1 + 1e-5) + 1e-12).all())  # sum g^2 <= (sum |g|)^2
    image_only = eligible_parameters(loaded.model, SaftConfig(towers="image"))
    assert image_only and all(n.startswith("visual.") for n in image_only)
    lean = eligible_parameters(loaded.model, SaftConfig(exclude_embeddings=True, exclude_norms=True,
                                                        exclude_biases=True))
    assert not any(n.endswith("bias") or "embedding" in n or "ln_" in n or "conv1" in n for n in lean)
    assert "visual.proj" in lean
    assert [p.requires_grad for p in loaded.model.parameters()] == flags  # scoring restores the flags


def test_differentiable_head_equals_open_clip_head(setup):
    _, loaded, ds, _ = setup
    templates = ["a photo of a {}.", "a drawing of a {}."]
    prompts = Prompts.build(loaded.tokenizer, ds.class_names, templates, "cpu")
    with torch.no_grad():
        torch.testing.assert_close(prompts.head(loaded.model),
                                   build_head(loaded.model, loaded.tokenizer, ds.class_names, templates, "cpu"))


@pytest.mark.parametrize("method", ["saft", "full"])
def test_set_weights_walks_the_frontier_and_comes_back_bitwise(shapes_dir, method):
    """alpha 0 is the base, alpha 1 the trained weights (bitwise, after any detour), and an alpha between is
    what the saved delta gives when applied to a fresh base at that alpha."""
    cfg = tiny_config(shapes_dir, method={"type": method}, train={"epochs": 1, "learning_rate": 5e-3})
    loaded = load_model(cfg.model, "cpu")
    ds = load_dataset(shapes_dir)
    prompts = Prompts.build(loaded.tokenizer, ds.class_names, cfg.data.templates, "cpu")
    base = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    if method == "saft":
        scores = score_parameters(loaded.model, make_loader(ds, loaded.preprocess_eval, 8), prompts, cfg.method,
                                  device=loaded.device)
        update = SparseUpdate(loaded.model, select_topk(scores, 0.01))
    else:
        update = DenseUpdate(loaded.model)
    train(loaded.model, make_loader(ds, loaded.preprocess_eval, 8, shuffle=True), prompts, update, cfg.train,
          device=loaded.device)
    tuned = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    deltas = update.deltas()

    def bitwise_equal(expected: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(p.detach().view(torch.int32), expected[n].view(torch.int32))
                   for n, p in loaded.model.named_parameters())

    update.set_weights(0.5)
    halfway = load_model(cfg.model, "cpu").model
    apply_delta(halfway, SparseDelta(deltas, {}), alpha=0.5)
    assert bitwise_equal(dict(halfway.named_parameters()))
    assert not bitwise_equal(tuned) and not bitwise_equal(base)
    update.set_weights(0.0)
    assert bitwise_equal(base)
    update.set_weights(0.75)
    update.set_weights(1.0)
    assert bitwise_equal(tuned)
    assert getattr(update, "tuned", None) is None  # the dense copy of the fine-tuned weights is freed
