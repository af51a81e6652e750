"""The one image decoder: orientation, modes, pixel limits and the errors every caller maps the same way."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from PIL import Image

from saft_core.images import ImageDecodeError, decode_image


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def test_exif_orientation_turns_the_image_upright():
    """A phone photo stored 40 wide x 20 high with 'rotate 90 CW to view' (6) is 20 wide x 40 high upright."""
    im = Image.new("RGB", (40, 20), "white")
    im.paste((255, 0, 0), (0, 0, 10, 20))  # red on the stored left edge: the top once upright
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(encode(im, "JPEG", exif=exif, quality=95))
    assert out.size == (20, 40)
    r, g, b = out.getpixel((10, 2))
    assert r > 200 and g < 60 and b < 60
    assert decode_image(encode(im, "JPEG", quality=95)).size == (40, 20)  # no tag: as stored


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16", "CMYK", "1"])
def test_every_mode_comes_out_rgb(mode):
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    out = decode_image(encode(Image.new(mode, (8, 6)), fmt))
    assert out.mode == "RGB" and out.size == (8, 6)


def test_paths_bytes_and_files_decode_alike(tmp_path: Path):
    im = Image.linear_gradient("L").resize((16, 16)).convert("RGB")
    path = tmp_path / "g.png"
    im.save(path)
    a, b, c = decode_image(path), decode_image(path.read_bytes()), decode_image(path.open("rb"))
    assert a.tobytes() == b.tobytes() == c.tobytes() == im.tobytes()


def test_over_the_pixel_limit_is_refused_from_the_header():
    data = encode(Image.new("RGB", (30, 20)), "PNG")
    assert decode_image(data, max_pixels=600).size == (30, 20)  # at the limit: fine
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(data, max_pixels=599)
    assert exc.value.code == "image_too_large"
    assert exc.value.message == "the image is 30 x 20 = 600 pixels; the limit is 599"


def test_a_decompression_bomb_is_too_large_when_its_warning_is_an_error(monkeypatch):
    data = encode(Image.new("L", (100, 100)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # as the API configures it
        with pytest.raises(ImageDecodeError) as exc:
            decode_image(data)
    assert exc.value.code == "image_too_large"


def test_an_image_past_twice_the_limit_is_refused_naming_the_limit_not_pils(monkeypatch):
    """PIL refuses at twice its limit before the header check runs; the message still says the real limit."""
    data = encode(Image.new("L", (100, 100)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000)  # the API sets PIL's limit to SAFT_MAX_IMAGE_PIXELS
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(data, max_pixels=2_000)
    assert exc.value.code == "image_too_large"
    assert exc.value.message == "the image is 10000 pixels; the limit is 2000"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "the file is empty"),
        (b"GIF89a garbage", "cannot identify image file"),
        (encode(Image.new("RGB", (64, 64), "red"), "PNG")[:60], "truncated"),
    ],
)
def test_undecodable_bytes_are_invalid_image(data, reason):
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(data)
    assert exc.value.code == "invalid_image" and reason in exc.value.message


def test_draft_decodes_a_big_jpeg_at_a_reduced_scale_but_not_below_the_draft():
    data = encode(Image.new("RGB", (800, 600), "blue"), "JPEG")
    out = decode_image(data, draft=(200, 150))
    assert out.size == (200, 150)
    assert decode_image(data, draft=(300, 300)).size == (400, 300)  # the 1/2 scale still covers 300 x 300
    assert decode_image(encode(Image.new("RGB", (800, 600)), "PNG"), draft=(200, 150)).size == (800, 600)


def test_the_upload_check_does_not_import_torch(shapes_dir: Path):
    """The dataset routes and the upload check (extract, list, decode every image) run without loading torch."""
    code = (
        "import sys\n"
        "import api.routes.datasets\n"
        "import saft_service.archives\n"
        "from saft_core.datasets import load_dataset\n"
        f"ds = load_dataset({str(shapes_dir)!r}, verify=True, max_pixels=10_000)\n"
        "assert len(ds) == 24, len(ds)\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    root = Path(__file__).resolve().parents[2]  # the repository's code, whatever is installed
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
