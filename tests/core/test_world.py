import json
import random

import numpy as np
import pytest

from saft_cli.main import main
from saft_core.datasets import load_dataset
from saft_worlds import palette, world


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


def test_a_rendered_folder_uploads_as_it_is(tmp_path):
    """The quickstarts upload `saft world render` folders as they are (zipped by the client, or as the curl
    section tars them): the record of the render is hidden, so the upload's checks see a plain ImageFolder."""
    import io
    import tarfile

    from saft_service.archives import Limits, check_folder, extract_archive
    from saft_service.settings import Settings

    root = world.render_image_folder(tmp_path / "w", "painting", 2, seed=1, classes=("star", "ring"))
    assert json.loads((root / world.RECORD_FILE).read_text())["domain"] == "painting"
    limits = Limits.of(Settings(data_dir=tmp_path))
    assert check_folder(root, limits, allowed=[tmp_path]) > 0  # registered in place (datasets import)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(root, ".")  # tar czf w.tar.gz -C w .
    buf.seek(0)
    extract_archive(buf, tmp_path / "extracted", limits)
    assert sorted(p.name for p in (tmp_path / "extracted").iterdir()) == ["ring", "star"]


def test_world_cli(tmp_path, capsys):
    assert main(["world", "domains"]) == 0
    assert capsys.readouterr().out.split() == list(world.DOMAINS)
    assert main(["world", "render", "--domain", "sketch", "--per-class", "1", "--seed", "2",
                 "--out", str(tmp_path / "s")]) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir()) == sorted(world.CLASSES)
    assert main(["world", "render", "--domain", "oil", "--per-class", "1", "--out", str(tmp_path / "x")]) == 2
    assert "unknown domain 'oil'" in capsys.readouterr().err
    assert main(["world", "render", "--domain", "photo", "--classes", "star,blob", "--per-class", "1",
                 "--out", str(tmp_path / "x")]) == 2
    assert "unknown classes ['blob']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_renders_are_pinned_to_the_palette_saft_tiny_was_trained_with():
    """The bundled weights saw these exact colours: a palette change must show here, not as a silent drift."""
    assert palette.COLOURS["red"] == (215, 40, 40) and palette.COLOURS["brown"] == (130, 80, 40)
    scene = world.Scene(cls="star", colour="red", size="large", position="center", domain="cartoon")
    centre = np.asarray(world.render(scene, seed=4, size=64))[32, 32]
    assert tuple(int(c) for c in centre) == (236, 44, 44)  # 1.1 x red, as the cartoon renderer fills it
