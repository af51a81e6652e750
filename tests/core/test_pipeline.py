"""End-to-end properties of a SAFT run on saft-tiny (random init) and generated images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from saft_core.checkpoint import apply_delta, load_delta, load_mask, read_metadata
from saft_core.config import ModelSpec
from saft_core.data import make_loader
from saft_core.datasets import load_dataset, sample_shots
from saft_core.errors import Cancelled, CheckpointError, DataError
from saft_core.frontier import ALPHA_GRID, RULE, recommend_alpha
from saft_core.models import load_model, weights_sha256
from saft_core.pipeline import finetune
from saft_core.results import Callbacks
from saft_core.zeroshot import build_head, clip_logits
from tests.core.test_masking import brute_force_topk
from tests.fixtures.model import tiny_config


@pytest.fixture(scope="module")
def run(shapes_dir, tmp_path_factory):
    """One SAFT run shared by the tests of this module."""
    out = tmp_path_factory.mktemp("run")
    stages = []
    result = finetune(tiny_config(shapes_dir), out, Callbacks(on_stage=stages.append))
    return result, stages


def recompute_scores(model, tokenizer, preprocess, dataset, batch_size=8):
    """SAFT's default scores written out plainly: sum over batches of |dL/dw| at the pre-trained weights."""
    texts = [f"a photo of a {c}." for c in dataset.class_names]
    tokens = tokenizer(texts)
    params = dict(model.named_parameters())
    scores = {n: torch.zeros_like(p) for n, p in params.items()}
    for images, labels in make_loader(dataset, preprocess, batch_size):
        text = model.encode_text(tokens, normalize=True)
        text = text / text.norm(dim=1, keepdim=True)  # mean over one template, renormalised
        image = model.encode_image(images, normalize=True)
        loss = F.cross_entropy(model.logit_scale.exp() * image @ text.T, labels)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (n, _), g in zip(params.items(), grads, strict=True):
            if g is not None:
                scores[n] += g.abs()
    return scores


def test_stages_run_in_order(run):
    _, stages = run
    assert stages == ["loading", "scoring", "masking", "training", "evaluating", "saving"]


def test_mask_is_exact_brute_force_topk_of_recomputed_scores(run, shapes_dir, saft_tiny):
    result, _ = run
    loaded = saft_tiny  # the run's base: saft-tiny, init seed 0
    scores = recompute_scores(loaded.model, loaded.tokenizer, loaded.preprocess_eval, load_dataset(shapes_dir))
    n = sum(s.numel() for s in scores.values())
    k = round(0.001 * n)
    mask = load_mask(result.mask_path)
    assert result.mask.k == k == sum(idx.numel() for idx in mask.values())
    expected = brute_force_topk(scores, k)
    assert {name: idx.tolist() for name, idx in mask.items()} == expected


def test_entries_outside_mask_are_bitwise_unchanged_and_checkpoint_reproduces_logits(shapes_dir, saft_tiny):
    # Train in-process, keep the fine-tuned model, and compare it with base + checkpoint.
    from saft_core.masking import select_topk
    from saft_core.scoring import score_parameters
    from saft_core.training import SparseUpdate, train
    from saft_core.zeroshot import Prompts

    cfg = tiny_config(shapes_dir, train={"epochs": 3, "learning_rate": 5e-3})
    loaded = saft_tiny  # cfg.model
    base = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    ds = load_dataset(shapes_dir)
    prompts = Prompts.build(loaded.tokenizer, ds.class_names, cfg.data.templates, "cpu")
    scores = score_parameters(loaded.model, make_loader(ds, loaded.preprocess_eval, 8), prompts, cfg.method,
                              device=loaded.device)
    mask = select_topk(scores, cfg.method.ratio)
    update = SparseUpdate(loaded.model, mask)
    train(loaded.model, make_loader(ds, loaded.preprocess_eval, 8, shuffle=True), prompts, update, cfg.train,
          device=loaded.device)

    changed = 0
    for name, p in loaded.model.named_parameters():
        keep = torch.ones(p.numel(), dtype=torch.bool)
        if name in mask.indices:
            keep[mask.indices[name]] = False
            changed += int((p.detach().reshape(-1)[~keep] != base[name].reshape(-1)[~keep]).sum())
        # bitwise: compare the raw bytes, not the values
        assert torch.equal(p.detach().reshape(-1)[keep].view(torch.int32), base[name].reshape(-1)[keep].view(torch.int32)), name
    assert changed > 0.9 * mask.k  # training did move the selected entries

    # The checkpoint applied to a fresh base reproduces the fine-tuned logits.
    from saft_core.checkpoint import SparseDelta

    fresh = load_model(cfg.model, "cpu")
    apply_delta(fresh.model, SparseDelta(update.deltas(), {}), alpha=1.0)
    images = torch.stack([loaded.preprocess_eval(Image.open(p).convert("RGB")) for p, _ in ds.samples[:6]])
    with torch.no_grad():
        head_ft = build_head(loaded.model, loaded.tokenizer, ds.class_names, cfg.data.templates, "cpu")
        head_ap = build_head(fresh.model, fresh.tokenizer, ds.class_names, cfg.data.templates, "cpu")
        torch.testing.assert_close(clip_logits(fresh.model, images, head_ap),
                                   clip_logits(loaded.model, images, head_ft), rtol=1e-5, atol=1e-5)


def test_checkpoint_file_format(run):
    result, _ = run
    meta = read_metadata(result.checkpoint_path)
    assert meta["format"] == "saft-sparse-delta" and meta["format_version"] == "1"
    for key in ("base_model", "pretrained", "base_sha256", "ratio", "k", "classes", "templates", "created_at"):
        assert key in meta
    assert meta["base_model"] == "saft-tiny" and meta["pretrained"] == "none"
    # the result says which base the checkpoint applies to, as the file does (no need to read it back)
    assert result.model == ModelSpec("saft-tiny", None, init_seed=0)
    assert int(meta["k"]) == result.mask.k and float(meta["ratio"]) == 0.001
    with safe_open(str(result.checkpoint_path), framework="pt") as f:
        keys = list(f.keys())
        names = {k.rsplit(":", 1)[0] for k in keys}
        for name in names:
            idx, delta = f.get_tensor(name + ":idx"), f.get_tensor(name + ":delta")
            assert idx.dtype == torch.int64 and delta.dtype == torch.float32 and idx.shape == delta.shape
            assert bool((idx[1:] > idx[:-1]).all())
    assert sum(1 for k in keys if k.endswith(":delta")) == sum(1 for t in result.mask.tensors if t.selected)
    # no temporary file is left beside the outputs
    assert sorted(p.name for p in result.checkpoint_path.parent.iterdir()) == ["checkpoint.safetensors", "mask.safetensors"]


def test_alpha_zero_gives_the_base_and_wrong_base_is_refused(run, saft_tiny):
    result, _ = run
    delta = load_delta(result.checkpoint_path)
    loaded = saft_tiny  # the run's base
    before = weights_sha256(loaded.model)
    apply_delta(loaded.model, delta, alpha=0.0, base_sha256=loaded.sha256)
    assert weights_sha256(loaded.model) == before
    apply_delta(loaded.model, delta, alpha=1.0, base_sha256=before)
    assert weights_sha256(loaded.model) != before

    other = load_model(ModelSpec("saft-tiny", None, init_seed=1), "cpu")
    untouched = weights_sha256(other.model)
    with pytest.raises(CheckpointError, match="other base weights"):
        apply_delta(other.model, delta, base_sha256=other.sha256)
    assert weights_sha256(other.model) == untouched


@pytest.mark.slow  # two fine-tunes
def test_same_seed_gives_identical_checkpoint(shapes_dir, tmp_path):
    a = finetune(tiny_config(shapes_dir), tmp_path / "a")
    b = finetune(tiny_config(shapes_dir), tmp_path / "b")
    da, db = load_delta(a.checkpoint_path), load_delta(b.checkpoint_path)
    assert da.tensors.keys() == db.tensors.keys()
    for name in da.tensors:
        assert torch.equal(da.tensors[name][0], db.tensors[name][0])
        assert torch.equal(da.tensors[name][1], db.tensors[name][1])
    assert any(float(d.abs().max()) > 0 for _, d in da.tensors.values())


@pytest.mark.slow  # two fine-tunes, one with worker processes
def test_data_loader_workers_change_nothing_but_speed(shapes_dir, shapes_eval_dir, tmp_path, monkeypatch):
    """Images transformed in 2 worker processes give the checkpoint and scores of the in-process run."""
    import saft_core.evaluation
    import saft_core.pipeline

    made = []  # the real make_loader, watched: which loaders the run builds, with how many workers

    def watched(*args, **kwargs):
        loader = make_loader(*args, **kwargs)
        made.append(loader.num_workers)
        return loader

    monkeypatch.setattr(saft_core.pipeline, "make_loader", watched)
    monkeypatch.setattr(saft_core.evaluation, "make_loader", watched)
    cfg = dict(data={"eval": {"shifted": str(shapes_eval_dir)}}, evaluate_zero_shot=False)
    a = finetune(tiny_config(shapes_dir, **cfg), tmp_path / "a")
    assert made == [0, 0, 0]  # scoring, training, evaluation (one loader for the eval set: read once)
    cfg["data"]["workers"] = 2
    b = finetune(tiny_config(shapes_dir, **cfg), tmp_path / "b")
    assert made[3:] == [2, 2, 2]
    da, db = load_delta(a.checkpoint_path), load_delta(b.checkpoint_path)
    assert da.tensors.keys() == db.tensors.keys()
    for name in da.tensors:
        assert torch.equal(da.tensors[name][0], db.tensors[name][0])
        assert torch.equal(da.tensors[name][1], db.tensors[name][1])
    assert [(e.dataset, e.top1, e.top5) for e in a.evaluations] == [(e.dataset, e.top1, e.top5) for e in b.evaluations]


def test_the_automatic_worker_count_reaches_every_loader_and_the_notes(shapes_dir, shapes_eval_dir, tmp_path,
                                                                       monkeypatch):
    """A run that names no worker count takes the core's rule (here made to answer 3) for every loader."""
    import saft_core.data
    import saft_core.evaluation
    import saft_core.pipeline

    asked, made = [], []
    monkeypatch.setattr(saft_core.data, "auto_workers", lambda device: asked.append(device) or 3)

    def watched(*args, num_workers, **kwargs):  # records the count, transforms in this process (fast)
        made.append(num_workers)
        return make_loader(*args, **kwargs)

    monkeypatch.setattr(saft_core.pipeline, "make_loader", watched)
    monkeypatch.setattr(saft_core.evaluation, "make_loader", watched)
    notes = []
    cfg = tiny_config(shapes_dir, data={"eval": {"shifted": str(shapes_eval_dir)}}, train={"epochs": 1},
                      evaluate_zero_shot=False)
    assert cfg.data.workers is None  # automatic unless named
    finetune(cfg, tmp_path, Callbacks(on_message=lambda level, text: notes.append(text)))
    assert [str(d) for d in asked] == ["cpu"] and made == [3, 3, 3]
    assert any("3 data-loader workers (chosen for cpu)" in n for n in notes), notes


@pytest.mark.slow  # two fine-tunes with worker processes
def test_augmented_run_with_workers_is_repeatable(shapes_dir, tmp_path):
    """Random crops drawn in 2 loader workers: the same seed gives the same checkpoint."""
    cfg = dict(data={"workers": 2}, train={"augment": True, "epochs": 1}, evaluate_zero_shot=False)
    a = load_delta(finetune(tiny_config(shapes_dir, **cfg), tmp_path / "a").checkpoint_path)
    b = load_delta(finetune(tiny_config(shapes_dir, **cfg), tmp_path / "b").checkpoint_path)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[n][1], b.tensors[n][1]) for n in a.tensors)


def test_validation_split_and_eval_sets_are_scored_along_alpha(shapes_dir, shapes_eval_dir, tmp_path):
    cfg = tiny_config(shapes_dir, data={"validation_fraction": 0.25, "eval": {"shifted": str(shapes_eval_dir)}})
    progress = []
    result = finetune(cfg, tmp_path, Callbacks(on_progress=progress.append))
    got = {(e.dataset, e.alpha): e for e in result.evaluations}
    assert set(got) == {(d, a) for d in ("validation", "shifted") for a in ALPHA_GRID}
    assert [got[("shifted", a)].model for a in ALPHA_GRID] == ["zero-shot"] + ["interpolated"] * 3 + ["fine-tuned"]
    assert got[("validation", 0.0)].n == 6  # 2 of 8 per class held out
    assert got[("shifted", 1.0)].n == 12
    for e in result.evaluations:
        assert 0.0 <= e.top1 <= e.top5 <= 1.0
    # one progress bar over every pass: 5 alphas x (1 + 2) batches of 8
    evaluating = [p for p in progress if p.stage == "evaluating"]
    assert [p.step for p in evaluating] == list(range(1, 16)) and {p.total for p in evaluating} == {15}

    # the recommendation: the frontier's rule on the validation rows, recorded in the checkpoint
    validation = {a: got[("validation", a)].top1 for a in ALPHA_GRID}
    assert result.recommended_alpha == recommend_alpha(validation, 6)
    assert result.recommended_alpha in ALPHA_GRID
    meta = read_metadata(result.checkpoint_path)
    assert float(meta["recommended_alpha"]) == result.recommended_alpha and meta["alpha_rule"] == RULE
    assert load_delta(result.checkpoint_path).recommended_alpha == result.recommended_alpha


def test_without_a_validation_split_nothing_is_recommended(run):
    result, _ = run
    assert result.recommended_alpha is None and result.evaluations == []  # no validation split, no eval set
    meta = read_metadata(result.checkpoint_path)
    assert "recommended_alpha" not in meta and "alpha_rule" not in meta
    assert load_delta(result.checkpoint_path).recommended_alpha is None


def test_no_zero_shot_leaves_alpha_zero_out(shapes_dir, tmp_path):
    cfg = tiny_config(shapes_dir, data={"validation_fraction": 0.25}, evaluate_zero_shot=False,
                      train={"epochs": 1})
    result = finetune(cfg, tmp_path)
    assert [e.alpha for e in result.evaluations] == [a for a in ALPHA_GRID if a > 0]
    assert result.recommended_alpha is not None and result.recommended_alpha > 0


def test_full_finetuning_writes_dense_delta(shapes_dir, tmp_path):
    result = finetune(tiny_config(shapes_dir, method={"type": "full"}, train={"epochs": 1}), tmp_path)
    assert result.mask is None and result.mask_path is None
    delta = load_delta(result.checkpoint_path)
    assert delta.metadata["method"] == "full"
    assert all(idx is None for idx, _ in delta.tensors.values())
    moved = sum(int((d != 0).sum()) for _, d in delta.tensors.values())
    # every entry with a gradient moves (rows of unused token embeddings have none): far more than 0.1 %
    assert moved > 0.1 * delta.num_entries


def test_cancellation_stops_the_run_and_writes_nothing(shapes_dir, tmp_path):
    seen = []

    def should_cancel():
        return "training" in seen

    with pytest.raises(Cancelled):
        finetune(tiny_config(shapes_dir), tmp_path / "out", Callbacks(on_stage=seen.append, should_cancel=should_cancel))
    assert seen[-1] == "training"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow  # three fine-tunes
def test_only_the_images_a_run_trains_on_are_decoded_before_it_trains(shapes_dir, shapes_eval_dir, tmp_path):
    import shutil

    train = tmp_path / "train"
    shutil.copytree(shapes_dir, train)
    evals = tmp_path / "eval"
    shutil.copytree(shapes_eval_dir, evals)
    # 1. A broken image the run never reads (outside its 2 shots per class) does not stop it.
    cfg = tiny_config(train, data={"shots": 2})
    kept = {p for p, _ in sample_shots(load_dataset(train, verify=False), 2, cfg.train.seed).samples}
    unread = next(p for p in sorted(train.rglob("*.png")) if p not in kept)
    unread.write_bytes(b"not an image")
    stages: list[str] = []
    assert finetune(cfg, tmp_path / "a", Callbacks(on_stage=stages.append)).checkpoint_path.exists()
    # 2. A broken image among those it trains on fails it while loading, before any training, naming the file.
    stages.clear()
    next(iter(kept)).write_bytes(b"not an image")
    with pytest.raises(DataError, match="are not readable images"):
        finetune(cfg, tmp_path / "b", Callbacks(on_stage=stages.append))
    assert stages == ["loading"]
    # 3. An eval set is read by the evaluating stage only: a broken eval image fails the run there, named.
    shutil.rmtree(train)
    shutil.copytree(shapes_dir, train)
    victim = sorted(evals.rglob("*.png"))[0]
    victim.write_bytes(b"not an image")
    stages.clear()
    with pytest.raises(DataError, match=f"cannot read image {victim}"):
        finetune(tiny_config(train, data={"eval": {"e": str(evals)}}), tmp_path / "c", Callbacks(on_stage=stages.append))
    assert stages[-1] == "evaluating"
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
