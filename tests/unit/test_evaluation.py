"""Evaluation along alpha: its ends are the zero-shot and fine-tuned scores as they were measured before the
frontier existed (the trained model as it is, the base model by switching the mask back), and its progress
counts every pass once."""

from __future__ import annotations

import math

import pytest

from saft_core.data import make_loader
from saft_core.datasets import load_dataset
from saft_core.evaluation import evaluate_along_alpha, evaluate_dataset
from saft_core.frontier import ALPHA_GRID
from saft_core.masking import select_topk
from saft_core.models import load_model
from saft_core.results import Callbacks
from saft_core.scoring import score_parameters
from saft_core.training import SparseUpdate, train
from saft_core.zeroshot import Prompts

from .conftest import tiny_config


@pytest.fixture(scope="module")
def _trained_once(shapes_dir):
    """A SAFT run trained in this process (a large step so the fine-tuned model differs from the base)."""
    cfg = tiny_config(shapes_dir, train={"epochs": 3, "learning_rate": 2e-2, "ratio": 0.01})
    loaded = load_model(cfg.model, "cpu")
    ds = load_dataset(shapes_dir)
    prompts = Prompts.build(loaded.tokenizer, ds.class_names, cfg.data.templates, "cpu")
    scores = score_parameters(loaded.model, make_loader(ds, loaded.preprocess_eval, 8), prompts, cfg.scoring,
                              device=loaded.device)
    update = SparseUpdate(loaded.model, select_topk(scores, cfg.train.ratio))
    train(loaded.model, make_loader(ds, loaded.preprocess_eval, 8, shuffle=True), prompts, update, cfg.train,
          device=loaded.device)
    return cfg, loaded, update


@pytest.fixture
def trained(_trained_once):
    """The run, handed to each test at its fine-tuned weights (alpha 1), whatever alpha the last test left."""
    cfg, loaded, update = _trained_once
    update.set_weights(1.0)
    return cfg, loaded, update


def test_the_ends_of_the_frontier_are_the_scores_measured_without_it(trained, shapes_dir, shapes_eval_dir):
    cfg, loaded, update = trained
    sets = [("train", load_dataset(shapes_dir)), ("shifted", load_dataset(shapes_eval_dir))]
    templates = list(cfg.data.templates)

    # before the frontier: the fine-tuned model as trained, then the base by switching the mask back
    tuned = {name: evaluate_dataset(loaded, ds, name=name, variant="fine-tuned", templates=templates, batch_size=5)
             for name, ds in sets}
    update.set_weights(0.0)
    base = {name: evaluate_dataset(loaded, ds, name=name, variant="zero-shot", templates=templates, batch_size=5)
            for name, ds in sets}
    update.set_weights(1.0)

    rows = evaluate_along_alpha(loaded, sets, ALPHA_GRID, update.set_weights, templates=templates, batch_size=5)
    assert [(r.alpha, r.dataset) for r in rows] == [(a, name) for a in ALPHA_GRID for name, _ in sets]
    assert {r.model for r in rows if 0 < r.alpha < 1} == {"interpolated"}
    for r in rows:
        if r.alpha == 1.0:
            assert r == tuned[r.dataset]  # every field, exactly
        elif r.alpha == 0.0:
            assert r == base[r.dataset]
    # the run moved the model: the two ends differ somewhere, so the equalities above say something
    assert any((tuned[n].top1, tuned[n].top5) != (base[n].top1, base[n].top5) for n, _ in sets)


def test_progress_runs_once_over_every_pass(trained, shapes_dir, shapes_eval_dir):
    cfg, loaded, update = trained
    sets = [("train", load_dataset(shapes_dir)), ("shifted", load_dataset(shapes_eval_dir))]  # 24 and 12 images
    seen = []
    alphas = (0.25, 0.5, 1.0)
    evaluate_along_alpha(loaded, sets, alphas, update.set_weights, templates=list(cfg.data.templates),
                         batch_size=5, callbacks=Callbacks(on_progress=seen.append))
    total = len(alphas) * (math.ceil(24 / 5) + math.ceil(12 / 5))
    assert [p.step for p in seen] == list(range(1, total + 1))
    assert {p.total for p in seen} == {total} and {p.stage for p in seen} == {"evaluating"}


def test_an_interpolated_score_needs_its_alpha(trained, shapes_dir):
    cfg, loaded, _ = trained
    with pytest.raises(ValueError, match="alpha"):
        evaluate_dataset(loaded, load_dataset(shapes_dir), name="x", variant="interpolated",
                         templates=list(cfg.data.templates))
