"""The demo shapes (``saft synth``): a small ImageFolder drawn in the world's palette."""

from __future__ import annotations

import json
import random

import numpy as np

from saft_cli.main import main
from saft_core.datasets import load_dataset
from saft_worlds.palette import COLOURS
from saft_worlds.shapes import draw_shape, render_shapes


def test_shapes_are_drawn_in_the_shared_palette():
    """A red square's pixels sit within the jitter (20 a channel) of the palette's red, not of another colour."""
    im = np.asarray(draw_shape("red", "square", random.Random(0), size=64)).reshape(-1, 3).astype(int)
    near = np.abs(im - np.array(COLOURS["red"])).max(axis=1) <= 20
    assert near.sum() >= (64 // 3) ** 2  # at least the smallest square
    assert not (np.abs(im - np.array(COLOURS["blue"])).max(axis=1) <= 20).any()


def test_render_shapes_is_a_loadable_seeded_image_folder(tmp_path):
    a = render_shapes(tmp_path / "a", per_class=3, seed=7)
    b = render_shapes(tmp_path / "b", per_class=3, seed=7)
    ds = load_dataset(a)
    assert ds.classes == ["blue_square", "green_triangle", "red_circle"]
    assert ds.class_names == ["blue square", "green triangle", "red circle"]
    assert ds.counts() == dict.fromkeys(ds.classes, 3)
    assert all((a / p.relative_to(a)).read_bytes() == (b / p.relative_to(a)).read_bytes() for p, _ in ds.samples)
    assert json.loads((a / "classes.json").read_text())["red_circle"] == "red circle"


def test_saft_synth_writes_the_demo_folder(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "demo"), "--per-class", "2", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("wrote 2 images per class for 3 classes to ")
    assert load_dataset(tmp_path / "demo").counts() == {"blue_square": 2, "green_triangle": 2, "red_circle": 2}
