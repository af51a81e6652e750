import gc
import json
import os
import signal

import pytest

from saft_core.data import (
    MAX_AUTO_WORKERS,
    auto_workers,
    available_cpus,
    machine_gpus,
    make_loader,
    resolve_workers,
)
from saft_core.datasets import load_dataset, sample_shots, split_validation
from saft_core.errors import DataError
from tests.fixtures.model import draw_image


def test_image_folder_order_and_class_names(tmp_path):
    for cls, files in {"b_cls": ["2.png", "1.png"], "a_cls": ["x.png"]}.items():
        for f in files:
            draw_image(tmp_path / cls / f)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "classes.json").write_text(json.dumps({"a_cls": "apple"}))
    ds = load_dataset(tmp_path)
    assert ds.classes == ["a_cls", "b_cls"]
    assert ds.class_names == ["apple", "b cls"]
    assert [(p.parent.name, p.name, y) for p, y in ds.samples] == [
        ("a_cls", "x.png", 0), ("b_cls", "1.png", 1), ("b_cls", "2.png", 1)]
    assert ds.counts() == {"a_cls": 1, "b_cls": 2}


def test_csv_manifest(tmp_path):
    draw_image(tmp_path / "img" / "a.png")
    draw_image(tmp_path / "img" / "b.png")
    (tmp_path / "m.csv").write_text("path,label\nimg/b.png,dog\nimg/a.png,cat\n")
    ds = load_dataset(tmp_path / "m.csv")
    assert ds.classes == ["cat", "dog"]
    assert [(p.name, y) for p, y in ds.samples] == [("b.png", 1), ("a.png", 0)]


def test_manifest_with_missing_file_names_it(tmp_path):
    draw_image(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("a.png,cat\nnope.png,dog\n")
    with pytest.raises(DataError, match="nope.png"):
        load_dataset(tmp_path / "m.csv")


def test_empty_dataset_is_refused(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_dataset(tmp_path)


def test_one_class_is_refused(tmp_path):
    draw_image(tmp_path / "cats" / "1.png")
    draw_image(tmp_path / "cats" / "2.png")
    with pytest.raises(DataError, match="1 class.*at least 2"):
        load_dataset(tmp_path)


def test_unreadable_images_are_named(tmp_path):
    draw_image(tmp_path / "cats" / "ok.png")
    draw_image(tmp_path / "dogs" / "ok.png")
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"1 file\(s\) are not readable images: dogs/broken.jpg"):
        load_dataset(tmp_path)


def test_missing_path_and_bad_classes_json(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    draw_image(tmp_path / "a" / "1.png")
    draw_image(tmp_path / "b" / "1.png")
    (tmp_path / "classes.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_dataset(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps({"zebra": "zebra"}))
    with pytest.raises(DataError, match="no folder: zebra"):
        load_dataset(tmp_path)


def test_shots_and_split_are_seeded_and_stratified(shapes_dir):
    ds = load_dataset(shapes_dir)
    a, b = sample_shots(ds, 3, seed=7), sample_shots(ds, 3, seed=7)
    assert a.samples == b.samples and set(a.counts().values()) == {3}
    assert sample_shots(ds, 3, seed=8).samples != a.samples
    train, val = split_validation(ds, 0.25, seed=0)
    assert set(val.counts().values()) == {2} and set(train.counts().values()) == {6}
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    _, empty = split_validation(ds, 0.0, seed=0)
    assert len(empty) == 0


def _to_tensor(image):
    import torchvision.transforms.functional as TF

    return TF.to_tensor(image.resize((16, 16)))


def _die(image):
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_reads_the_same_with_and_without_loader_workers(shapes_dir, tmp_path, workers):
    ds = load_dataset(shapes_dir)
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"not an image")
    ds.samples[1] = (str(victim), ds.samples[1][1])  # goes bad after loading, as a file on a shared disk can
    with pytest.raises(DataError) as exc:
        for _ in make_loader(ds, _to_tensor, 4, num_workers=workers):
            pass
    assert exc.value.code == "invalid_dataset"
    assert exc.value.message.startswith(f"cannot read image {victim}") and "Traceback" not in exc.value.message
    # The error's traceback holds the loader and its worker processes in a reference cycle; collected later,
    # inside another test, their shutdown took 10 s there. End them here.
    del exc
    gc.collect()


def test_a_killed_loader_worker_is_a_clear_error(shapes_dir):
    with pytest.raises(DataError, match="data-loader worker process died.*shared memory") as exc:
        for _ in make_loader(load_dataset(shapes_dir), _die, 4, num_workers=1):
            pass
    assert exc.value.code == "data_loader_failed"


@pytest.mark.parametrize(("device", "cpus", "gpus", "workers"), [
    ("cpu", 16, 1, 0),  # on the CPU the main process transforms, as before there was a rule
    ("cuda", 16, 1, MAX_AUTO_WORKERS),  # a GPU's share of 16 cores, capped
    ("cuda:1", 16, 4, 4),  # 4 jobs, one per GPU, share the 16 cores
    ("cuda", 6, 4, 1),  # fewer cores than GPUs: still one worker, never the starving 0
    ("cuda", 3, 1, 3),
])
def test_automatic_loader_workers(device, cpus, gpus, workers):
    assert auto_workers(device, cpus=cpus, gpus=gpus) == workers


def test_a_named_worker_count_wins_over_the_automatic_one():
    assert resolve_workers(0, "cuda") == 0
    assert resolve_workers(3, "cpu") == 3
    assert resolve_workers(None, "cpu") == 0


@pytest.mark.parametrize(("cpu_max", "limit"), [("max 100000\n", None), ("200000 100000\n", 2),
                                                 ("150000 100000\n", 1), ("50000 100000\n", 1)])
def test_available_cpus_honours_the_cgroup_limit(tmp_path, cpu_max, limit):
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert available_cpus(tmp_path / "cpu.max") == (affinity if limit is None else max(1, min(affinity, limit)))
    assert available_cpus(tmp_path / "missing") == affinity


def test_machine_gpus_counts_the_driver_listing(tmp_path):
    for pci in ("0000:01:00.0", "0000:41:00.0", "0000:81:00.0"):
        (tmp_path / pci).mkdir()
    assert machine_gpus(tmp_path) == 3
    assert machine_gpus(tmp_path / "missing") >= 1  # no driver listing: the visible CUDA devices, at least 1
