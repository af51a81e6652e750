"""The benchmark's pieces: LoRA through peft in the shared loop, aggregation, the report."""

import json

import pytest
import torch

from benchmarks.shift import (
    LoraUpdate,
    best_ood_at_id,
    decide,
    markdown,
    parse_grid,
    plot,
    seed_record,
    summarise_method,
)
from saft_core.checkpoint import apply_delta
from saft_core.config import ModelSpec, TrainConfig
from saft_core.data import make_loader
from saft_core.datasets import load_dataset
from saft_core.models import load_model
from saft_core.training import train
from saft_core.zeroshot import Prompts
from saft_worlds.shapes import render_shapes


def test_lora_trains_only_adapters_and_merges(tmp_path):
    loaded = load_model(ModelSpec("saft-tiny", None), "cpu")
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    update = LoraUpdate(loaded.model, rank=4)
    names = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert any(".mlp.c_fc." in n for n in names) and any(".mlp.c_proj." in n for n in names)
    ds = load_dataset(render_shapes(tmp_path / "d", per_class=4))
    prompts = Prompts.build(loaded.tokenizer, ds.class_names, ["a photo of a {}."], "cpu")
    train(loaded.model, make_loader(ds, loaded.preprocess_eval, 4, shuffle=True), prompts, update,
          TrainConfig(epochs=1, batch_size=4, learning_rate=1e-2), device=loaded.device)
    merged = {n.replace(".base_layer", ""): p for n, p in update.merged().named_parameters() if "lora_" not in n}
    changed = [n for n, p in merged.items() if not torch.equal(p, before[n])]
    assert changed and all(".mlp.c_fc." in n or ".mlp.c_proj." in n for n in changed)


def _curve(ids, oods, val):
    return {a: {"val": v, "id": i, "v2": i - 0.1, "ood_a": o, "ood_b": o}
            for a, i, o, v in zip((0.0, 0.5, 1.0), ids, oods, val, strict=True)}


def _b2n(val_base, val_new):
    return {a: {"val_base": vb, "val_new": vn, "base_classes": vb, "new_classes": vn}
            for a, vb, vn in zip((0.0, 0.5, 1.0), val_base, val_new, strict=True)}


def test_seed_record_applies_the_rule_and_scores_the_harmonic_mean():
    rec = seed_record(_curve((0.3, 0.5, 0.52), (0.4, 0.35, 0.3), (0.3, 0.49, 0.5)),
                      _b2n((0.3, 0.6, 0.6), (0.5, 0.4, 0.2)), n_val=400, n_val_base=400)
    # best val 0.5, se = 0.025: alpha 0.5 (0.49) is within it, alpha 0 is not
    assert rec["recommended_alpha"] == 0.5 and rec["recommended_alpha_b2n"] == 0.5
    assert rec["frontier"][1.0]["ood_avg"] == pytest.approx(0.3) and rec["frontier"][0.5]["new_classes"] == 0.4
    assert rec["val_hm_recommended"] == pytest.approx(2 * 0.49 * 0.4 / 0.89)
    assert rec["val_hm_alpha1"] == pytest.approx(2 * 0.5 * 0.2 / 0.7)
    assert rec["at_recommended"]["id"] == 0.5 and rec["at_recommended"]["new_classes"] == 0.4


def test_best_ood_at_an_id_target_interpolates_along_the_frontier():
    frontier = {"0.0": {"id": 0.2, "ood_avg": 0.5}, "0.5": {"id": 0.4, "ood_avg": 0.45},
                "1.0": {"id": 0.5, "ood_avg": 0.3}}
    assert best_ood_at_id(frontier, 0.45) == pytest.approx(0.375)  # halfway between alpha 0.5 and 1
    assert best_ood_at_id(frontier, 0.3) == pytest.approx(0.475)
    assert best_ood_at_id(frontier, 0.1) == pytest.approx(0.5)
    assert best_ood_at_id(frontier, 0.6) is None


def test_decide_keeps_the_default_variant_unless_another_wins_by_the_margin():
    def method(hm_rec, hm_1):
        return {"val_hm_recommended": hm_rec, "val_hm_alpha1": hm_1}

    close = {"saft": method(0.50, 0.45), "saft-noemb": method(0.505, 0.4), "full": method(0.9, 0.9)}
    d = decide(close)
    assert d["variant"] == "saft" and d["alpha"] == "recommended"  # full is not a SAFT variant
    clear = {"saft": method(0.50, 0.45), "saft-noemb": method(0.53, 0.54)}
    d = decide(clear)
    assert d["variant"] == "saft-noemb" and d["alpha"] == 1.0
    assert decide({"full": method(0.5, 0.5)}) is None


def test_report_and_plot_from_seed_records(tmp_path):
    seeds = [seed_record(_curve((0.3, 0.5, 0.5 + e), (0.4, 0.35, 0.3), (0.3, 0.49, 0.5)),
                         _b2n((0.3, 0.6, 0.6), (0.5, 0.4, 0.2)), 400, 400) for e in (0.0, 0.02)]
    m = summarise_method(seeds)
    assert m["frontier"]["1.0"]["id"] == pytest.approx(0.51) and m["frontier"]["1.0"]["std"]["id"] > 0
    assert m["recommended_alpha"] == [0.5, 0.5]
    results = {"methods": {"full": m | {"hyperparameters": {"lr": 1}}, "saft": m | {"hyperparameters": {"lr": 2}}},
               "target_id": 0.5, "protocol": {"model": "m", "shots": 16, "train_domain": "d", "seeds": [0, 1],
                                              "alphas": [0.0, 0.5, 1.0]}}
    results["decision"] = decide(results["methods"])
    table = markdown(results)
    assert "| full | 51.0 ± 1.4 |" in table and "| wise-ft (full at alpha 0.5) | 50.0 ± 0.0 |" in table
    assert "Chosen: variant **saft**" in table
    plot(results, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(results)  # the report is JSON-serialisable


def test_grid_flag_parses_and_rejects_bad_values():
    assert parse_grid("full=3e-5,1e-4:10,20") == ("full", ((3e-5, 1e-4), (10, 20)))
    for bad, why in (("dense=1e-4:10", "method must be one of"), ("full=1e-4", "expected METHOD="),
                     ("full=1e-4:0", "must be positive"), ("full=nan:10", "must be positive"), ("full=fast:10", "could not convert")):
        with pytest.raises(ValueError, match=why):
            parse_grid(bad)


@pytest.mark.slow
def test_quick_benchmark_runs_end_to_end(tmp_path):
    """``python -m benchmarks.shift --quick``, as CI or a user runs it: every method, a report, a plot. With 16
    training images and 6 test images a class (the quick run's 64 and 12 take four times as long): the pieces
    all run, the numbers are a smoke test's."""
    import subprocess
    import sys

    from benchmarks.shift import QUICK_GRIDS

    proc = subprocess.run([sys.executable, "-m", "benchmarks.shift", "--quick", "--shots", "16", "--test-per-class",
                           "6", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "shift.json").read_text())
    methods = results["methods"]
    assert set(methods) == {"full", "saft", "lora"}
    zero_shot = {name: m["frontier"]["0.0"] for name, m in methods.items()}
    for name, m in methods.items():
        assert list(m["frontier"]) == ["0.0", "0.25", "0.5", "0.75", "1.0"]
        for point in m["frontier"].values():
            for key in ("id", "v2", "ood_avg", "new_classes", "val"):
                assert 0.0 <= point[key] <= 1.0, (name, key)
        # alpha 0 is the pre-trained model whatever the delta: every method's curve starts at zero-shot
        assert {k: v for k, v in m["frontier"]["0.0"].items() if k != "std"} == {
            k: v for k, v in zero_shot["full"].items() if k != "std"}
        assert m["recommended_alpha"][0] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert m["best_ood_at_target"] is None or 0.0 <= m["best_ood_at_target"] <= 1.0
    # the bundled model knows its world: zero-shot well above chance (1/12) in and out of distribution
    assert zero_shot["full"]["id"] > 2 / 12 and zero_shot["full"]["ood_avg"] > 2 / 12
    # fine-tuning moves the model: full fine-tuning's alpha 1 is not its alpha 0
    assert methods["full"]["frontier"]["1.0"]["id"] != methods["full"]["frontier"]["0.0"]["id"]
    assert methods["full"]["hyperparameters"] == {"lr": QUICK_GRIDS["full"][0][0], "epochs": QUICK_GRIDS["full"][1][0]}
    assert sum(methods["saft"]["runs"][0]["mask_top_tensors"].values()) > 0
    assert results["decision"]["variant"] == "saft"  # the only variant run
    table = (tmp_path / "shift.md").read_text()
    assert all(f"| {name} |" in table for name in methods) and "| wise-ft (full at alpha 0.5) |" in table
    assert (tmp_path / "shift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_real_data_path_with_image_folders(tmp_path):
    """The path for real CLIP and ImageNet-style folders (``--train-dir`` etc.), run on rendered folders."""
    from benchmarks.shift import main
    from saft_worlds import world

    for name, domain, per_class, seed in (("train", "painting", 6, 1), ("val", "painting", 3, 2),
                                          ("id", "painting", 3, 3), ("sketch", "sketch", 3, 4)):
        world.render_image_folder(tmp_path / name, domain, per_class, seed)
    out = tmp_path / "out"
    rc = main(["--train-dir", str(tmp_path / "train"), "--val-dir", str(tmp_path / "val"),
               "--id-dir", str(tmp_path / "id"), "--ood", f"sketch={tmp_path / 'sketch'}", "--shots", "4",
               "--seeds", "2", "--methods", "full,saft,lora", "--alphas", "0,0.5,1", "--grid", "full=1e-4:2", "--grid", "saft=1e-3:2", "--grid", "lora=1e-3,3e-3:2",
               "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "shift.json").read_text())
    assert set(results["methods"]) == {"full", "saft", "lora"}
    for m in results["methods"].values():
        assert list(m["frontier"]) == ["0.0", "0.5", "1.0"]
        point = m["frontier"]["1.0"]
        assert point["seeds"] == 2 and set(point) >= {"id", "ood_sketch", "ood_avg"} and "new_classes" not in point
    assert results["decision"] is None  # no base-to-new on real folders: nothing to decide
    table = results["selection"]["lora"]  # two learning rates: chosen on the validation folder
    assert [row["lr"] for row in table] == [1e-3, 3e-3]
    assert results["methods"]["lora"]["hyperparameters"]["lr"] == max(table, key=lambda r: r["val_top1"])["lr"]


def test_real_data_needs_a_validation_set(capsys):
    from benchmarks.shift import main

    with pytest.raises(SystemExit) as exc:
        main(["--train-dir", "x", "--id-dir", "y"])
    assert exc.value.code == 2 and "--val-dir" in capsys.readouterr().err


def test_selection_from_an_earlier_run(tmp_path):
    from benchmarks.shift import load_selection

    (tmp_path / "selection.json").write_text(json.dumps({"chosen": {"saft": {"lr": 1e-3, "epochs": 10},
                                                                    "full": {"lr": 3e-4, "epochs": 10}}}))
    assert load_selection(str(tmp_path / "selection.json"), ("saft", "saft-noemb")) == {"saft": {"lr": 1e-3, "epochs": 10}}
    (tmp_path / "shift.json").write_text(json.dumps({"methods": {
        "zero-shot": {"hyperparameters": "-"}, "lora": {"hyperparameters": {"lr": 3e-4, "epochs": 10, "rank": 8}}}}))
    assert load_selection(str(tmp_path / "shift.json"), ("lora",)) == {"lora": {"lr": 3e-4, "epochs": 10}}


def test_merged_lora_is_a_delta_the_evaluator_scales_along_alpha(tmp_path):
    from benchmarks.shift import Evaluator, Plan

    ds_path = render_shapes(tmp_path / "d", per_class=4)
    plan = Plan(model=ModelSpec("saft-tiny", None), train_domain="-", shots=4, seeds=[0], test_per_class=4,
                val_per_class=4, batch_size=4, grids={}, device="cpu")
    ev = Evaluator(plan, {"val": str(ds_path)})
    loaded = load_model(plan.model, "cpu")
    update = LoraUpdate(loaded.model, rank=4)
    ds = load_dataset(ds_path)
    prompts = Prompts.build(loaded.tokenizer, ds.class_names, ["a photo of a {}."], "cpu")
    train(loaded.model, make_loader(ds, loaded.preprocess_eval, 4, shuffle=True), prompts, update,
          TrainConfig(epochs=2, batch_size=4, learning_rate=3e-2), device=loaded.device)
    delta = ev.delta_of(update.merged())
    assert delta.tensors and all(".mlp.c_fc." in n or ".mlp.c_proj." in n for n in delta.tensors)
    base_before = {n: p.clone() for n, p in ev.model.named_parameters()}
    curve = ev.frontier(delta, (0.0, 1.0), ["val"])
    assert curve[0.0] == ev.frontier(None, (0.0,), ["val"])[0.0]  # alpha 0 is the pre-trained model
    # the evaluator puts the base weights back after scoring a delta
    assert all(torch.equal(p, base_before[n]) for n, p in ev.model.named_parameters())
    # at alpha 1 the weights are the merged model's
    apply_delta(ev.model, delta, alpha=1.0)
    merged = {n.replace(".base_layer", ""): p for n, p in update.model.named_parameters() if "lora_" not in n}
    assert all(torch.allclose(p, merged[n], atol=1e-6) for n, p in ev.model.named_parameters())
