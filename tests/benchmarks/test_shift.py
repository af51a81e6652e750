"""The benchmark's pieces: LoRA through peft in the shared loop, aggregation, the report."""

import json

import pytest
import torch

from benchmarks.shift import LoraUpdate, markdown, parse_grid, plot, summarise, with_aggregates
from saft_core.config import ModelSpec, TrainConfig
from saft_core.data import load_dataset, make_loader
from saft_core.models import load_model
from saft_core.synthetic import render_shapes
from saft_core.training import train
from saft_core.zeroshot import Prompts


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


def test_aggregates_summary_and_report(tmp_path):
    rows = [with_aggregates({"id": 0.5, "v2": 0.4, "ood_a": 0.2, "ood_b": 0.4, "new_classes": 0.6}),
            with_aggregates({"id": 0.7, "v2": 0.4, "ood_a": 0.4, "ood_b": 0.4, "new_classes": 0.6})]
    assert abs(rows[0]["ood_avg"] - 0.3) < 1e-9 and abs(rows[0]["shift_avg"] - 1 / 3) < 1e-9
    s = summarise(rows)
    assert s["id"] == 0.6 and s["seeds"] == 2 and abs(s["std"]["id"] - 0.1414) < 1e-3 and s["std"]["v2"] == 0
    results = {"methods": {"zero-shot": s | {"hyperparameters": "-"}, "full": s | {"hyperparameters": {"lr": 1}}},
               "saft_ratio_sweep": {"0.001": s}, "protocol": {"model": "m", "shots": 16, "train_domain": "d"}}
    table = markdown(results)
    assert "| full | 60.0 ± 14.1 |" in table and "SAFT ratio sweep" in table
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
    """``python -m benchmarks.shift --quick``, as CI or a user runs it: every method, a report, a plot."""
    import subprocess
    import sys

    from benchmarks.shift import QUICK_GRIDS

    proc = subprocess.run([sys.executable, "-m", "benchmarks.shift", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "shift.json").read_text())
    methods = results["methods"]
    assert set(methods) == {"zero-shot", "full", "saft", "lora", "wise-ft"}
    for name, m in methods.items():
        assert m["seeds"] == 1
        for key in ("id", "v2", "ood_avg", "new_classes"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
    # the bundled model knows its world: zero-shot well above chance (1/12) in and out of distribution
    assert methods["zero-shot"]["id"] > 2 / 12 and methods["zero-shot"]["ood_avg"] > 2 / 12
    assert methods["full"]["hyperparameters"] == {"lr": QUICK_GRIDS["full"][0][0], "epochs": QUICK_GRIDS["full"][1][0]}
    assert methods["wise-ft"]["hyperparameters"]["alpha"] == 0.5
    assert sum(methods["saft"]["runs"][0]["mask_top_tensors"].values()) > 0
    assert list(results["saft_ratio_sweep"]) == ["0.001"]
    table = (tmp_path / "shift.md").read_text()
    assert all(f"| {name} |" in table for name in methods)
    assert (tmp_path / "shift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_real_data_path_with_image_folders(tmp_path):
    """The path for real CLIP and ImageNet-style folders (``--train-dir`` etc.), run on rendered folders."""
    from benchmarks.shift import main
    from saft_core import world

    for name, domain, per_class, seed in (("train", "painting", 6, 1), ("val", "painting", 3, 2),
                                          ("id", "painting", 3, 3), ("sketch", "sketch", 3, 4)):
        world.render_image_folder(tmp_path / name, domain, per_class, seed)
    out = tmp_path / "out"
    rc = main(["--train-dir", str(tmp_path / "train"), "--val-dir", str(tmp_path / "val"),
               "--id-dir", str(tmp_path / "id"), "--ood", f"sketch={tmp_path / 'sketch'}", "--shots", "4",
               "--seeds", "2", "--grid", "full=1e-4:2", "--grid", "saft=1e-3:2", "--grid", "lora=1e-3,3e-3:2",
               "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "shift.json").read_text())
    assert set(results["methods"]) == {"zero-shot", "full", "saft", "lora", "wise-ft"}
    for m in results["methods"].values():
        assert m["seeds"] == 2 and set(m) >= {"id", "ood_sketch", "ood_avg"} and "new_classes" not in m
    table = results["selection"]["lora"]  # two learning rates: chosen on the validation folder
    assert [row["lr"] for row in table] == [1e-3, 3e-3]
    assert results["methods"]["lora"]["hyperparameters"]["lr"] == max(table, key=lambda r: r["val_top1"])["lr"]
    assert list(results["saft_ratio_sweep"]) == ["0.0001", "0.001", "0.01", "0.1"]


def test_real_data_needs_a_validation_set(capsys):
    from benchmarks.shift import main

    with pytest.raises(SystemExit) as exc:
        main(["--train-dir", "x", "--id-dir", "y"])
    assert exc.value.code == 2 and "--val-dir" in capsys.readouterr().err
