"""The checks behind the service's limits, on their own (no stack): JSON depth without parsing, values JSON and
Postgres cannot store, names, the model allow-list, and what a client may see of a server path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saft_service.allowed_models import check_model, resolve_pretrained
from saft_service.input_checks import (
    LimitError,
    check_json_value,
    check_name,
    json_depth_exceeds,
    loads_bounded,
)
from saft_service.settings import Settings
from saft_service.storage import is_storage_full, redact_paths


@pytest.mark.parametrize(
    ("text", "depth", "too_deep"),
    [
        ("[]", 1, False),
        ("[[]]", 1, True),
        ('{"a": {"b": [1, 2]}}', 3, False),
        ('{"a": {"b": [1, 2]}}', 2, True),
        ('["[[[[[[[[", "]]]]"]', 1, False),  # brackets inside strings do not count
        ('["\\"[[[["]', 1, False),  # nor after an escaped quote
        ("[" * 100_000 + "]" * 100_000, 16, True),  # far deeper than the parser's recursion limit
    ],
)
def test_json_depth_is_found_without_parsing(text: str, depth: int, too_deep: bool) -> None:
    assert json_depth_exceeds(text, depth) is too_deep


@pytest.mark.timeout(30)
def test_an_unterminated_string_of_escaped_quotes_is_scanned_in_one_pass() -> None:
    """A body of one quote and a megabyte of escaped quotes: a string pattern that must reach a closing quote
    backtracks to the end from every quote (about an hour for 1 MB, with the API's event loop blocked)."""
    body = b'"' + b'\\"' * 500_000 + b"[[[["
    assert json_depth_exceeds(body, 2) is False  # all of it is inside the (unterminated) string


def test_loads_bounded_refuses_depth_and_non_numbers() -> None:
    assert loads_bounded('{"a": [1]}', max_depth=2, what="x") == {"a": [1]}
    with pytest.raises(LimitError) as e:
        loads_bounded("[" * 5000 + "]" * 5000, max_depth=16, what="labels")
    assert e.value.code == "json_too_deep" and "labels" in e.value.message
    with pytest.raises(ValueError, match="NaN"):
        loads_bounded("[NaN]", max_depth=4, what="x")


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ({"a": float("inf")}, "non_finite_number"),
        ({"a": [1.0, float("nan")]}, "non_finite_number"),
        ({"a": "x\x00"}, "nul_character"),
        ({"a\x00": 1}, "nul_character"),
        (json.loads("[" * 30 + "]" * 30), "json_too_deep"),
    ],
)
def test_values_postgres_cannot_store_are_refused(value: object, code: str) -> None:
    with pytest.raises(LimitError) as e:
        check_json_value(value, max_depth=16, what="metadata")
    assert e.value.code == code


def test_a_fine_value_passes() -> None:
    check_json_value({"a": [1, 2.5, "text", None, {"b": True}]}, max_depth=16, what="metadata")


@pytest.mark.parametrize(
    ("name", "code"),
    [("x" * 201, "class_name_too_long"), ("a\nb", "control_characters"), ("rtl\u202eoverride", "control_characters")],
)
def test_names_are_bounded_and_printable(name: str, code: str) -> None:
    with pytest.raises(LimitError) as e:
        check_name(name, max_chars=200, what="class", code="class_name_too_long")
    assert e.value.code == code
    check_name("golden retriever", max_chars=200, what="class", code="class_name_too_long")


def test_models_come_from_the_allow_list(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "mine.safetensors").write_bytes(b"x")
    (tmp_path / "outside.bin").write_bytes(b"x")
    settings = Settings(data_dir=tmp_path, models_dir=models)
    for pretrained in ("world", "default", "none", None, "mine.safetensors"):
        check_model("saft-tiny", pretrained, settings)
    assert resolve_pretrained("mine.safetensors", settings) == str(models / "mine.safetensors")
    assert resolve_pretrained("world", settings) == "world"
    refused = ["../outside.bin", str(tmp_path / "outside.bin"), "/etc/passwd", "missing.bin", "mine.safetensors\x00"]
    messages = set()
    for pretrained in refused:
        with pytest.raises(LimitError) as e:
            check_model("saft-tiny", pretrained, settings)
        assert e.value.code == "model_not_allowed"
        messages.add(e.value.message.replace(repr(pretrained[:100]), "<x>"))
    assert len(messages) == 1  # the same answer whether the file exists or not: no oracle
    with pytest.raises(LimitError) as e:
        check_model("hf-hub:org/repo", None, settings)
    assert e.value.code == "model_not_allowed"
    check_model("hf-hub:org/repo", None, Settings(data_dir=tmp_path, allow_hf_hub=True))
    with pytest.raises(LimitError) as e:
        check_model("no-such-architecture", None, settings)
    assert e.value.code == "unknown_model"


def test_server_paths_are_redacted() -> None:
    text = "cannot read /srv/data/staging/up_1/cat/x.png, nor /etc/passwd: ratio 1/2\x00"
    out = redact_paths(text, {Path("/srv/data/staging/up_1"): "the archive"})
    assert out == "cannot read the archive/cat/x.png, nor <path>: ratio 1/2 "


def test_a_full_disk_is_recognised_through_wrappers() -> None:
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as e:
            raise RuntimeError("could not save") from e
    except RuntimeError as wrapped:
        assert is_storage_full(wrapped)
    assert is_storage_full(Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"))
    assert not is_storage_full(OSError(2, "No such file or directory"))
