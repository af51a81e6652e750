import random
import subprocess
import sys

import numpy as np
import pytest

from saft_core.datasets import load_dataset
from saft_worlds import world


def test_world_has_enough_classes_and_domains():
    assert len(world.CLASSES) >= 10 and len(set(world.CLASSES)) == len(world.CLASSES)
    assert len(world.DOMAINS) >= 5


@pytest.mark.parametrize("domain", world.DOMAINS)
def test_render_is_a_pure_function_of_the_seed(domain):
    scene = world.sample_scene("star", domain, random.Random(3))
    a, b = world.render(scene, 11), world.render(scene, 11)
    assert a.size == (64, 64) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(world.render(scene, 12)))


def test_domains_look_different():
    """Mean colour statistics differ across domains for the same scenes (sketches are bright and grey...)."""
    stats = {}
    for domain in world.DOMAINS:
        arrs = [np.asarray(im, dtype=float) for _, im in world.iter_domain(domain, 2, seed=0)]
        stack = np.stack(arrs)
        stats[domain] = (stack.mean(), stack.std(axis=-1).mean())  # brightness, colourfulness
    assert stats["sketch"][0] > stats["photo"][0] + 30
    assert stats["sketch"][1] < stats["cartoon"][1]


def test_shifted_resample_differs_from_the_original():
    base = [np.asarray(im, dtype=float) for _, im in world.iter_domain("photo", 3, seed=0)]
    v2 = [np.asarray(im, dtype=float) for _, im in world.iter_domain("photo", 3, seed=0, shift=world.Shift.v2())]
    # same scenes and seeds, other generation parameters: every image changes, on average by > 5 grey levels
    diffs = [np.abs(a - b).mean() for a, b in zip(base, v2, strict=True)]
    assert min(diffs) > 1 and np.mean(diffs) > 5


def test_captions_name_class_and_domain():
    rng = random.Random(0)
    for domain in world.DOMAINS:
        for cls in world.CLASSES:
            text = world.caption(world.sample_scene(cls, domain, rng), rng)
            assert cls in text
            assert any(w in text for w in world.DOMAIN_WORDS[domain])


def test_render_image_folder_loads_as_dataset(tmp_path):
    root = world.render_image_folder(tmp_path / "w", "cartoon", 2, seed=5, classes=("star", "ring", "heart"))
    ds = load_dataset(root)
    assert ds.classes == ["heart", "ring", "star"] and ds.counts() == {"heart": 2, "ring": 2, "star": 2}


def test_world_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "saft_cli", "world", "domains"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == list(world.DOMAINS)
    r = subprocess.run([sys.executable, "-m", "saft_cli", "world", "render", "--domain", "sketch",
                        "--per-class", "1", "--seed", "2", "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir()) == sorted(world.CLASSES)
    r = subprocess.run([sys.executable, "-m", "saft_cli", "world", "render", "--domain", "oil",
                        "--per-class", "1", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown domain 'oil'" in r.stderr
