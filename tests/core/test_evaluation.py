"""Evaluation along alpha: its ends are the zero-shot and fine-tuned scores as they were measured before the
frontier existed (the trained model as it is, the base model by switching the mask back); every score is the
one a pass per alpha and set gives, to the bit, whichever order reads the images (once, or once per alpha);
and its progress counts every pass once."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch

import saft_core.evaluation
from saft_core.data import make_loader
from saft_core.datasets import load_dataset
from saft_core.errors import Cancelled
from saft_core.evaluation import evaluate_along_alpha, evaluate_dataset, read_once_pays
from saft_core.frontier import ALPHA_GRID
from saft_core.masking import select_topk
from saft_core.models import load_model
from saft_core.results import Callbacks, variant_at
from saft_core.scoring import score_parameters
from saft_core.training import DenseUpdate, SparseUpdate, train
from saft_core.zeroshot import Prompts
from tests.fixtures.model import tiny_config


@pytest.fixture(scope="module")
def _trained_once(shapes_dir):
    """A SAFT run trained in this process (a large step so the fine-tuned model differs from the base)."""
    cfg = tiny_config(shapes_dir, train={"epochs": 3, "learning_rate": 2e-2}, method={"ratio": 0.01})
    loaded = load_model(cfg.model, "cpu")
    ds = load_dataset(shapes_dir)
    prompts = Prompts.build(loaded.tokenizer, ds.class_names, cfg.data.templates, "cpu")
    scores = score_parameters(loaded.model, make_loader(ds, loaded.preprocess_eval, 8), prompts, cfg.method,
                              device=loaded.device)
    update = SparseUpdate(loaded.model, select_topk(scores, cfg.method.ratio))
    train(loaded.model, make_loader(ds, loaded.preprocess_eval, 8, shuffle=True), prompts, update, cfg.train,
          device=loaded.device)
    return cfg, loaded, update


@pytest.fixture(scope="module")
def _dense_once(shapes_dir):
    """A full fine-tuning run trained in this process: every weight moves, so a switch writes the whole model."""
    cfg = tiny_config(shapes_dir, method={"type": "full"}, train={"epochs": 2, "learning_rate": 1e-3})
    loaded = load_model(cfg.model, "cpu")
    ds = load_dataset(shapes_dir)
    prompts = Prompts.build(loaded.tokenizer, ds.class_names, cfg.data.templates, "cpu")
    update = DenseUpdate(loaded.model)
    train(loaded.model, make_loader(ds, loaded.preprocess_eval, 8, shuffle=True), prompts, update, cfg.train,
          device=loaded.device)
    return cfg, loaded, update


@pytest.fixture
def trained(_trained_once):
    """The run, handed to each test at its fine-tuned weights (alpha 1), whatever alpha the last test left."""
    cfg, loaded, update = _trained_once
    update.set_weights(1.0)
    return cfg, loaded, update


@pytest.fixture(params=["saft", "full"])
def either(request):
    """The SAFT run and the full fine-tuning run, each at its fine-tuned weights."""
    cfg, loaded, update = request.getfixturevalue("_trained_once" if request.param == "saft" else "_dense_once")
    update.set_weights(1.0)
    return cfg, loaded, update


@pytest.fixture
def two_sets(shapes_dir, shapes_eval_dir):
    return [("train", load_dataset(shapes_dir)), ("shifted", load_dataset(shapes_eval_dir))]  # 24 and 12 images


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def counting_reads(loaded):
    """``loaded`` whose eval transform counts the images it is given (one per image read), and the count."""
    reads = [0]

    def transform(image):
        reads[0] += 1
        return loaded.preprocess_eval(image)

    return dataclasses.replace(loaded, preprocess_eval=transform), reads


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


@pytest.mark.parametrize("order", ["batch", "alpha"])
def test_progress_runs_once_over_every_pass(trained, two_sets, order):
    cfg, loaded, update = trained
    seen = []
    alphas = (0.25, 0.5, 1.0)
    evaluate_along_alpha(loaded, two_sets, alphas, update.set_weights, templates=list(cfg.data.templates),
                         batch_size=5, callbacks=Callbacks(on_progress=seen.append), order=order)
    total = len(alphas) * (math.ceil(24 / 5) + math.ceil(12 / 5))
    assert [p.step for p in seen] == list(range(1, total + 1))
    assert {p.total for p in seen} == {total} and {p.stage for p in seen} == {"evaluating"}


def test_an_interpolated_score_needs_its_alpha(trained, shapes_dir):
    cfg, loaded, _ = trained
    with pytest.raises(ValueError, match="alpha"):
        evaluate_dataset(loaded, load_dataset(shapes_dir), name="x", variant="interpolated",
                         templates=list(cfg.data.templates))


# an arbitrary order that ends between the ends: the weights afterwards must be those of the last alpha
ALPHAS = (0.5, 0.0, 1.0, 0.25)


# make check runs the read-once order of both methods; the other orders (a pass per alpha each) run in make test
@pytest.mark.parametrize("order", ["batch", pytest.param("alpha", marks=pytest.mark.slow),
                                   pytest.param("auto", marks=pytest.mark.slow)])
def test_every_score_is_a_pass_per_alpha_and_set_to_the_bit(either, two_sets, order):
    cfg, loaded, update = either
    templates = list(cfg.data.templates)

    # the order before the images were read once: for every alpha, every set read and scored again
    expected = []
    for alpha in ALPHAS:
        update.set_weights(alpha)
        expected += [evaluate_dataset(loaded, ds, name=name, variant=variant_at(alpha), alpha=alpha,
                                      templates=templates, batch_size=5) for name, ds in two_sets]
    at_last = weights(loaded.model)
    update.set_weights(1.0)
    loaded.model.train()

    rows = evaluate_along_alpha(loaded, two_sets, ALPHAS, update.set_weights, templates=templates, batch_size=5,
                                order=order)
    assert rows == expected  # every field, exactly, in the same (alpha-major) order
    after = weights(loaded.model)  # the weights are the last alpha's, bitwise, and the mode is the caller's
    assert all(torch.equal(after[n], at_last[n]) for n in at_last) and loaded.model.training
    # the alphas score differently somewhere, so the equality above says something
    assert len({(r.top1, r.top5) for r in rows if r.dataset == "train"}) > 1


@pytest.mark.parametrize(("order", "passes"), [("batch", 1), ("alpha", len(ALPHAS))])
def test_order_batch_reads_each_image_once(trained, two_sets, order, passes):
    cfg, loaded, update = trained
    counted, reads = counting_reads(loaded)
    evaluate_along_alpha(counted, two_sets, ALPHAS, update.set_weights, templates=list(cfg.data.templates),
                         batch_size=5, order=order)
    assert reads[0] == passes * (24 + 12)


@pytest.mark.slow  # evaluates along alpha three times
def test_auto_order_times_a_switch_and_a_read_and_says_when_it_reads_once_per_alpha(trained, two_sets,
                                                                                    monkeypatch):
    cfg, loaded, update = trained
    asked = []

    def slow_switch(alpha):  # a switch that costs at least 20 ms
        time.sleep(0.02)
        update.set_weights(alpha)

    def rule(switch_s, read_s):
        asked.append((switch_s, read_s))
        return False

    monkeypatch.setattr(saft_core.evaluation, "read_once_pays", rule)
    counted, reads = counting_reads(loaded)
    notes = []
    rows = evaluate_along_alpha(counted, two_sets, ALPHAS, slow_switch, templates=list(cfg.data.templates),
                                batch_size=5, callbacks=Callbacks(on_message=lambda *m: notes.append(m)))
    assert len(asked) == 1 and asked[0][0] >= 0.02 and asked[0][1] > 0
    assert reads[0] == len(ALPHAS) * (24 + 12)  # the fallback: every alpha reads every set again
    assert len(notes) == 1 and notes[0][0] == "info" and f"read once per alpha ({len(ALPHAS)} times)" in notes[0][1]
    update.set_weights(1.0)
    assert rows == evaluate_along_alpha(loaded, two_sets, ALPHAS, update.set_weights,
                                        templates=list(cfg.data.templates), batch_size=5, order="batch")

    monkeypatch.setattr(saft_core.evaluation, "read_once_pays", lambda switch_s, read_s: True)
    notes.clear()
    reads[0] = 0
    evaluate_along_alpha(counted, two_sets, ALPHAS, slow_switch, templates=list(cfg.data.templates),
                         batch_size=5, callbacks=Callbacks(on_message=lambda *m: notes.append(m)))
    assert reads[0] == 24 + 12 and notes == []


def test_reading_once_pays_when_a_switch_costs_no_more_than_a_read():
    assert read_once_pays(0.001, 0.050)  # SAFT: k entries against a batch of images
    assert read_once_pays(0.050, 0.050)
    assert not read_once_pays(0.200, 0.050)  # a big dense model on the CPU


@pytest.mark.parametrize("order", ["batch", "alpha"])
def test_cancellation_is_polled_before_every_batch(trained, two_sets, order):
    cfg, loaded, update = trained
    polls = []
    batches = math.ceil(24 / 5) + math.ceil(12 / 5)
    evaluate_along_alpha(loaded, two_sets, ALPHAS, update.set_weights, templates=list(cfg.data.templates),
                         batch_size=5, order=order, callbacks=Callbacks(should_cancel=lambda: polls.append(1)))
    assert len(polls) == (batches if order == "batch" else len(ALPHAS) * batches)

    polls.clear()
    with pytest.raises(Cancelled):
        evaluate_along_alpha(loaded, two_sets, ALPHAS, update.set_weights, templates=list(cfg.data.templates),
                             batch_size=5, order=order,
                             callbacks=Callbacks(should_cancel=lambda: polls.append(1) or len(polls) > 2))
    assert len(polls) == 3


def test_nothing_to_score_leaves_the_weights_alone(either, two_sets):
    cfg, loaded, update = either
    before = weights(loaded.model)
    assert evaluate_along_alpha(loaded, [], ALPHAS, update.set_weights, templates=list(cfg.data.templates)) == []
    assert evaluate_along_alpha(loaded, two_sets, [], update.set_weights, templates=list(cfg.data.templates)) == []
    after = weights(loaded.model)
    assert all(torch.equal(after[n], before[n]) for n in before)
