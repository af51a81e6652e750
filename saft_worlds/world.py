"""A procedural image-text world: objects with attributes, rendered in domains that differ the way ImageNet's
variants differ from ImageNet, with captions.

- 12 object classes (``CLASSES``), 8 colours, 2 sizes, 5 positions, 4 background kinds.
- 5 domains (``DOMAINS``): ``photo`` (texture, lighting, shadow, noise), ``sketch`` (pencil outline on paper),
  ``cartoon`` (flat fill, thick outline), ``painting`` (brush blobs, blur, posterised colour), ``clutter``
  (photo-like object among distractors, partly occluded).
- ``Shift`` changes generation parameters inside a domain (rotation, scale, palette, lighting, backgrounds): a
  fresh resample with ``Shift.v2()`` plays the part of ImageNet-V2.

Everything is a pure function of a seed: the same (domain, class, seed) renders the same pixels.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from .palette import COLOURS

CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring",
    "crescent", "diamond", "hexagon", "arrow", "heart", "house",
)
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
DOMAINS: tuple[str, ...] = ("photo", "sketch", "cartoon", "painting", "clutter")
DOMAIN_WORDS = {
    "photo": ("photo", "picture", "snapshot"),
    "sketch": ("sketch", "pencil drawing", "line drawing"),
    "cartoon": ("cartoon", "clip art", "illustration"),
    "painting": ("painting", "watercolor", "oil painting"),
    "clutter": ("cluttered photo", "busy photo", "photo of a messy scene with"),
}
SUPERSAMPLE = 2


@dataclass(frozen=True)
class Shift:
    """Generation parameters; ``v2()`` is the shifted resample."""

    max_rotation: float = 25.0       # degrees
    scale: tuple[float, float] = (0.22, 0.40)   # radius as a fraction of the image side
    colour_jitter: int = 25
    light_strength: float = 0.35
    noise: float = 10.0
    palette_shift: int = 0           # added to every colour channel, then clipped

    @classmethod
    def v2(cls) -> Shift:
        return cls(max_rotation=60.0, scale=(0.16, 0.30), colour_jitter=45, light_strength=0.6, noise=18.0,
                   palette_shift=-35)


@dataclass(frozen=True)
class Scene:
    """What is drawn: the attributes a caption can mention."""

    cls: str
    colour: str
    size: str
    position: str
    domain: str


# ------------------------------------------------------------------------------------------- geometry
def _polygon(cls: str, r: float) -> list[list[tuple[float, float]]]:
    """Filled outline(s) of a class around (0, 0) with radius r; a list of polygons (unioned)."""
    def circle(rad: float, n: int = 40, cx: float = 0.0, cy: float = 0.0):
        return [(cx + rad * math.cos(2 * math.pi * i / n), cy + rad * math.sin(2 * math.pi * i / n)) for i in range(n)]

    if cls in ("circle", "ring", "crescent"):
        return [circle(r)]
    if cls == "square":
        s = r * 0.85
        return [[(-s, -s), (s, -s), (s, s), (-s, s)]]
    if cls == "triangle":
        return [[(0, -r), (r * 0.95, r * 0.7), (-r * 0.95, r * 0.7)]]
    if cls == "star":
        return [[((r if i % 2 == 0 else r * 0.42) * math.cos(math.pi * i / 5 - math.pi / 2),
                  (r if i % 2 == 0 else r * 0.42) * math.sin(math.pi * i / 5 - math.pi / 2)) for i in range(10)]]
    if cls == "cross":
        w = r * 0.32
        return [[(-w, -r), (w, -r), (w, r), (-w, r)], [(-r, -w), (r, -w), (r, w), (-r, w)]]
    if cls == "diamond":
        return [[(0, -r), (r * 0.65, 0), (0, r), (-r * 0.65, 0)]]
    if cls == "hexagon":
        return [[(r * math.cos(math.pi * i / 3), r * math.sin(math.pi * i / 3)) for i in range(6)]]
    if cls == "arrow":
        w = r * 0.22
        return [[(-r, -w), (r * 0.2, -w), (r * 0.2, -r * 0.6), (r, 0), (r * 0.2, r * 0.6), (r * 0.2, w), (-r, w)]]
    if cls == "heart":
        pts = []
        for i in range(48):
            t = 2 * math.pi * i / 48
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x * r / 17, y * r / 17))
        return [pts]
    if cls == "house":
        return [[(-r * 0.75, -r * 0.1), (0, -r), (r * 0.75, -r * 0.1), (r * 0.75, r * 0.85), (-r * 0.75, r * 0.85)]]
    raise ValueError(f"unknown class {cls!r}")


def _holes(cls: str, r: float) -> list[list[tuple[float, float]]]:
    """Regions cut out of the filled shape (ring's hole, crescent's bite, house's door)."""
    def circle(rad: float, cx: float = 0.0, cy: float = 0.0, n: int = 40):
        return [(cx + rad * math.cos(2 * math.pi * i / n), cy + rad * math.sin(2 * math.pi * i / n)) for i in range(n)]

    if cls == "ring":
        return [circle(r * 0.55)]
    if cls == "crescent":
        return [circle(r * 0.85, cx=r * 0.45, cy=-r * 0.15)]
    if cls == "house":
        return [[(-r * 0.18, r * 0.3), (r * 0.18, r * 0.3), (r * 0.18, r * 0.85), (-r * 0.18, r * 0.85)]]
    return []


def _transform(poly, cx: float, cy: float, angle: float):
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in poly]


def shape_mask(cls: str, side: int, cx: float, cy: float, r: float, angle: float) -> Image.Image:
    """Binary ('L', 0/255) mask of the object."""
    m = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(m)
    for poly in _polygon(cls, r):
        d.polygon(_transform(poly, cx, cy, angle), fill=255)
    for poly in _holes(cls, r):
        d.polygon(_transform(poly, cx, cy, angle), fill=0)
    return m


# ------------------------------------------------------------------------------------------- textures
def _noise(rng: np.random.Generator, side: int, amount: float) -> np.ndarray:
    return rng.normal(0.0, amount, (side, side, 1))


def _background(kind: str, rng: np.random.Generator, side: int, base: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side] / side
    img = np.ones((side, side, 3)) * base
    if kind == "gradient":
        direction = rng.uniform(-1, 1, 2)
        img = img + (xx * direction[0] + yy * direction[1])[..., None] * rng.uniform(30, 70)
    elif kind == "stripes":
        f = rng.uniform(4, 10)
        img = img + (np.sin((xx + yy * rng.uniform(-1, 1)) * f * 2 * math.pi) > 0)[..., None] * rng.uniform(20, 45)
    elif kind == "noise":
        coarse = rng.normal(0, 25, (8, 8, 3))
        img = img + np.kron(coarse, np.ones((side // 8, side // 8, 1)))
    return img


def _jitter_colour(rgb: tuple[int, int, int], rng: random.Random, amount: int, shift: int) -> np.ndarray:
    return np.clip(np.array([c + rng.randint(-amount, amount) + shift for c in rgb], dtype=float), 0, 255)


# ------------------------------------------------------------------------------------------- domains
def _place(scene: Scene, rng: random.Random, side: int, shift: Shift) -> tuple[float, float, float, float]:
    lo, hi = shift.scale
    frac = rng.uniform(lo, (lo + hi) / 2) if scene.size == "small" else rng.uniform((lo + hi) / 2, hi)
    r = frac * side
    margin = r + 1
    centre = {"left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3), "bottom": (0.5, 0.7),
              "center": (0.5, 0.5)}[scene.position]
    cx = min(max(centre[0] * side + rng.uniform(-0.06, 0.06) * side, margin), side - margin)
    cy = min(max(centre[1] * side + rng.uniform(-0.06, 0.06) * side, margin), side - margin)
    angle = math.radians(rng.uniform(-shift.max_rotation, shift.max_rotation))
    return cx, cy, r, angle


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _render_photo(scene: Scene, rng: random.Random, nrng: np.random.Generator, side: int, shift: Shift,
                  mask: Image.Image, box: tuple[float, float, float, float]) -> np.ndarray:
    cx, cy, r, _ = box
    bg_base = np.array([rng.randint(70, 190) for _ in range(3)], dtype=float)
    img = _background(rng.choice(["gradient", "noise", "stripes", "plain"]), nrng, side, bg_base)
    # drop shadow
    shadow = np.asarray(mask.filter(ImageFilter.GaussianBlur(side * 0.03)), dtype=float)[..., None] / 255.0
    off = int(side * 0.04)
    shadow = np.roll(np.roll(shadow, off, axis=0), off, axis=1)
    img = img * (1 - 0.45 * shadow)
    # lit, textured object
    colour = _jitter_colour(COLOURS[scene.colour], rng, shift.colour_jitter, shift.palette_shift)
    yy, xx = np.mgrid[0:side, 0:side]
    la = rng.uniform(0, 2 * math.pi)
    light = 1.0 + shift.light_strength * (((xx - cx) * math.cos(la) + (yy - cy) * math.sin(la)) / (r + 1e-6)).clip(-1, 1)[..., None] * 0.5
    texture = 1.0 + nrng.normal(0, 0.08, (side, side, 1))
    obj = colour * light * texture
    m = np.asarray(mask, dtype=float)[..., None] / 255.0
    img = img * (1 - m) + obj * m
    return img + _noise(nrng, side, shift.noise)


def _render_sketch(scene: Scene, rng: random.Random, nrng: np.random.Generator, side: int, shift: Shift,
                   mask: Image.Image, box) -> np.ndarray:
    paper = np.array([rng.randint(225, 250)] * 3, dtype=float) + np.array([0, -3, -10]) * rng.random()
    img = np.ones((side, side, 3)) * paper + _noise(nrng, side, 4.0)
    width = max(1, int(side * rng.uniform(0.012, 0.025)))
    edge = ImageChops.subtract(mask.filter(ImageFilter.MaxFilter(2 * width + 1)), mask)
    # pencil: broken, slightly displaced strokes
    strokes = np.asarray(edge, dtype=float) / 255.0
    gaps = nrng.random((side // 4 + 1, side // 4 + 1)) > 0.15
    strokes = strokes * np.kron(gaps, np.ones((4, 4)))[:side, :side]
    dx, dy = rng.randint(-1, 1), rng.randint(-1, 1)
    strokes = np.maximum(strokes, 0.6 * np.roll(np.roll(strokes, dx, 0), dy, 1))
    hatch = (np.add.outer(np.arange(side), np.arange(side)) % max(3, side // 12) == 0) * (np.asarray(mask) > 0) * rng.random() * 0.5
    ink = np.array([rng.randint(20, 70)] * 3, dtype=float)
    s = np.maximum(strokes, hatch)[..., None]
    return img * (1 - s) + ink * s


def _render_cartoon(scene: Scene, rng: random.Random, nrng: np.random.Generator, side: int, shift: Shift,
                    mask: Image.Image, box) -> np.ndarray:
    bg = np.array([rng.randint(170, 245) for _ in range(3)], dtype=float)
    img = np.ones((side, side, 3)) * bg
    colour = np.clip(np.array(COLOURS[scene.colour], dtype=float) * 1.1 + shift.palette_shift // 2, 0, 255)
    m = np.asarray(mask, dtype=float)[..., None] / 255.0
    img = img * (1 - m) + colour * m
    width = max(2, int(side * 0.035))
    outline = ImageChops.subtract(mask.filter(ImageFilter.MaxFilter(2 * width + 1)), mask.filter(ImageFilter.MinFilter(3)))
    o = np.asarray(outline, dtype=float)[..., None] / 255.0
    img = img * (1 - o) + np.array([15.0, 15.0, 15.0]) * o
    # a cartoon highlight
    cx, cy, r, _ = box
    yy, xx = np.mgrid[0:side, 0:side]
    hl = (((xx - (cx - r * 0.35)) ** 2 + (yy - (cy - r * 0.35)) ** 2) < (r * 0.15) ** 2)[..., None] * m
    return img * (1 - hl * 0.6) + 255 * hl * 0.6


def _render_painting(scene: Scene, rng: random.Random, nrng: np.random.Generator, side: int, shift: Shift,
                     mask: Image.Image, box) -> np.ndarray:
    canvas = Image.new("RGB", (side, side), tuple(rng.randint(80, 200) for _ in range(3)))
    d = ImageDraw.Draw(canvas)
    for _ in range(30):  # brush blobs
        x, y, rr = rng.uniform(0, side), rng.uniform(0, side), rng.uniform(side * 0.05, side * 0.2)
        d.ellipse((x - rr, y - rr * 0.5, x + rr, y + rr * 0.5), fill=tuple(rng.randint(60, 220) for _ in range(3)))
    img = np.asarray(canvas, dtype=float)
    colour = _jitter_colour(COLOURS[scene.colour], rng, shift.colour_jitter + 30, shift.palette_shift)
    soft = mask.filter(ImageFilter.GaussianBlur(side * 0.02))
    m = np.asarray(soft, dtype=float)[..., None] / 255.0
    strokes = 1.0 + 0.15 * np.sin(np.arange(side)[None, :, None] * rng.uniform(0.3, 0.8) + nrng.normal(0, 1, (side, 1, 1)))
    img = img * (1 - m) + colour * strokes * m
    out = _to_image(img).filter(ImageFilter.GaussianBlur(side * rng.uniform(0.008, 0.018)))
    bits = rng.choice([3, 4])
    out = Image.fromarray((np.asarray(out) >> (8 - bits) << (8 - bits)).astype(np.uint8))
    return np.asarray(out, dtype=float)


def _render_clutter(scene: Scene, rng: random.Random, nrng: np.random.Generator, side: int, shift: Shift,
                    mask: Image.Image, box) -> np.ndarray:
    img = _render_photo(scene, rng, nrng, side, shift, mask, box)
    pil = _to_image(img)
    d = ImageDraw.Draw(pil)
    cx, cy, r, _ = box
    for _ in range(rng.randint(4, 7)):  # small distractors of other classes
        other = rng.choice([c for c in CLASSES if c != scene.cls])
        rr = r * rng.uniform(0.25, 0.45)
        x, y = rng.uniform(rr, side - rr), rng.uniform(rr, side - rr)
        col = tuple(int(c) for c in _jitter_colour(rng.choice(list(COLOURS.values())), rng, 30, 0))
        for poly in _polygon(other, rr):
            d.polygon(_transform(poly, x, y, rng.uniform(0, 6.28)), fill=col)
    for _ in range(rng.randint(1, 2)):  # occluding bars across the object
        w = side * rng.uniform(0.04, 0.08)
        y = cy + rng.uniform(-r, r) * 0.7
        d.rectangle((0, y - w / 2, side, y + w / 2), fill=tuple(rng.randint(40, 220) for _ in range(3)))
    return np.asarray(pil, dtype=float) + _noise(nrng, side, shift.noise * 0.5)


_RENDERERS = {"photo": _render_photo, "sketch": _render_sketch, "cartoon": _render_cartoon,
              "painting": _render_painting, "clutter": _render_clutter}


def sample_scene(cls: str, domain: str, rng: random.Random) -> Scene:
    return Scene(cls, rng.choice(list(COLOURS)), rng.choice(SIZES), rng.choice(POSITIONS), domain)


def render(scene: Scene, seed: int, size: int = 64, shift: Shift | None = None) -> Image.Image:
    """Render one scene at ``size`` px (drawn at 2x and downsampled for anti-aliasing)."""
    if scene.domain not in _RENDERERS:
        raise ValueError(f"unknown domain {scene.domain!r}; domains: {', '.join(DOMAINS)}")
    shift = shift or Shift()
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    side = size * SUPERSAMPLE
    box = _place(scene, rng, side, shift)
    mask = shape_mask(scene.cls, side, *box)
    arr = _RENDERERS[scene.domain](scene, rng, nrng, side, shift, mask, box)
    return _to_image(arr).resize((size, size), Image.Resampling.LANCZOS)


def caption(scene: Scene, rng: random.Random) -> str:
    """A caption that always names the class and the domain, and some of the other attributes."""
    word = rng.choice(DOMAIN_WORDS[scene.domain])
    attrs = []
    if rng.random() < 0.5:
        attrs.append(scene.size)
    if rng.random() < 0.7:
        attrs.append(scene.colour)
    where = f" on the {scene.position}" if scene.position != "center" and rng.random() < 0.4 else ""
    obj = " ".join([*attrs, scene.cls])
    article = "an" if obj[0] in "aeiou" else "a"
    if word.endswith("with"):
        return f"a {word} {article} {obj}{where}"
    return rng.choice([f"a {word} of {article} {obj}{where}.", f"{article} {obj}{where}, {word}.",
                       f"{word} of {article} {obj}{where}"])


def _item_seed(seed: int, domain: str, cls: str, i: int) -> int:
    return (seed * 1_000_003 + DOMAINS.index(domain) * 10_007 + CLASSES.index(cls) * 101 + i) % (2**31)


def iter_domain(domain: str, per_class: int, seed: int, classes: tuple[str, ...] = CLASSES,
                shift: Shift | None = None, size: int = 64) -> Iterator[tuple[Scene, Image.Image]]:
    for cls in classes:
        for i in range(per_class):
            s = _item_seed(seed, domain, cls, i)
            scene = sample_scene(cls, domain, random.Random(s))
            yield scene, render(scene, s, size, shift)


RECORD_FILE = ".world.json"


def render_image_folder(out: str | Path, domain: str, per_class: int, seed: int, *,
                        classes: tuple[str, ...] = CLASSES, shift: Shift | None = None, size: int = 64) -> Path:
    """Write an ImageFolder (class names as folder names) of ``per_class`` renders per class, with what was
    rendered in ``.world.json``: hidden, so that the folder uploads as it is (the service's layout check, like
    the readers, skips dot files and refuses any other file beside the class folders)."""
    root = Path(out)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
    counters = dict.fromkeys(classes, 0)
    for scene, image in iter_domain(domain, per_class, seed, classes, shift, size):
        image.save(root / scene.cls / f"{domain}_{counters[scene.cls]:05d}.png")
        counters[scene.cls] += 1
    (root / RECORD_FILE).write_text(json.dumps(
        {"domain": domain, "per_class": per_class, "seed": seed, "size": size,
         "shift": None if shift is None else shift.__dict__}, default=list))
    return root


def corpus(n: int, seed: int, domain_weights: dict[str, float] | None = None, size: int = 64,
           classes: tuple[str, ...] = CLASSES) -> Iterator[tuple[Image.Image, str]]:
    """``n`` (image, caption) pairs for contrastive pre-training, domains drawn by ``domain_weights``."""
    weights = domain_weights or dict.fromkeys(DOMAINS, 1.0)
    doms, w = list(weights), list(weights.values())
    rng = random.Random(seed)
    for i in range(n):
        domain = rng.choices(doms, w)[0]
        cls = rng.choice(classes)
        s = (seed * 7_919 + i * 104_729) % (2**31)
        scene = sample_scene(cls, domain, rng)
        shift = Shift() if rng.random() < 0.8 else replace(Shift.v2(), palette_shift=0)
        yield render(scene, s, size, shift), caption(scene, rng)
