"""Small generated image datasets for demos and tests: coloured shapes on noisy backgrounds.

Each class is a (colour, shape) pair, so a CLIP model can be fine-tuned to tell them apart in seconds. This is
not a benchmark world; it only makes the CLI and the service runnable without downloading anything. Colours
come from the world's palette (``palette.COLOURS``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from .palette import COLOURS

SHAPES = ("circle", "square", "triangle")
DEFAULT_CLASSES: tuple[tuple[str, str], ...] = (("red", "circle"), ("blue", "square"), ("green", "triangle"))


def draw_shape(colour: str, shape: str, rng: random.Random, size: int = 64) -> Image.Image:
    """One image of a ``colour`` ``shape`` with random position, scale and background noise."""
    bg = tuple(rng.randint(90, 200) for _ in range(3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    for _ in range(12):  # background clutter
        x, y = rng.randrange(size), rng.randrange(size)
        d.point((x, y), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    r = rng.randint(size // 6, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return im


def render_shapes(
    out: str | Path,
    classes: list[tuple[str, str]] | None = None,
    per_class: int = 8,
    seed: int = 0,
    size: int = 64,
) -> Path:
    """Write an ImageFolder of ``per_class`` PNGs for each (colour, shape) class and a classes.json."""
    classes = classes or list(DEFAULT_CLASSES)
    root = Path(out)
    rng = random.Random(seed)
    names = {}
    for colour, shape in classes:
        folder = f"{colour}_{shape}"
        names[folder] = f"{colour} {shape}"
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(colour, shape, rng, size).save(root / folder / f"{i:04d}.png")
    (root / "classes.json").write_text(json.dumps(names, indent=1))
    return root
