"""What a classify request resolves to (saft_service/classify_request.py), without HTTP or a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from saft_core.config import DEFAULT_TEMPLATES
from saft_service.classify_request import ClassifyRefused, choose_classifier, decode_upload, parse_labels
from saft_service.input_checks import LimitError
from saft_service.settings import Settings
from saft_service.storage import Storage
from saft_service.tables import Job


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


def test_labels_are_a_bounded_list_of_distinct_names(settings: Settings) -> None:
    assert parse_labels(None, settings) is None
    assert parse_labels('["cat", "dog"]', settings) == ["cat", "dog"]
    with pytest.raises(ClassifyRefused) as refused:
        parse_labels('["cat", "cat"]', settings)
    assert (refused.value.status, refused.value.code) == (422, "invalid_labels")
    with pytest.raises(LimitError) as limited:
        parse_labels("[" * (settings.max_json_depth + 1) + "]" * (settings.max_json_depth + 1), settings)
    assert limited.value.code == "json_too_deep"


def test_a_job_that_has_not_succeeded_is_refused_with_409(settings: Settings) -> None:
    job = Job(id="job_0123", status="running", spec={})
    with pytest.raises(ClassifyRefused) as refused:
        choose_classifier(job=job, model=None, pretrained=None, labels=["a"], alpha=1.0, settings=settings,
                          storage=Storage(settings))
    assert (refused.value.status, refused.value.code) == (409, "job_not_succeeded")
    assert "job_0123 is running" in refused.value.message


def test_zero_shot_needs_labels_and_applies_alpha_one(settings: Settings) -> None:
    storage = Storage(settings)
    with pytest.raises(ClassifyRefused) as refused:
        choose_classifier(job=None, model=None, pretrained=None, labels=None, alpha=0.3, settings=settings,
                          storage=storage)
    assert refused.value.code == "invalid_labels"
    choice = choose_classifier(job=None, model=None, pretrained=None, labels=["cat", "dog"], alpha=0.3,
                               settings=settings, storage=storage)
    assert (choice.fine_tuned, choice.alpha, choice.labels) == (False, 1.0, ["cat", "dog"])
    assert choice.checkpoint is None and choice.templates == len(DEFAULT_TEMPLATES)


def test_an_undecodable_image_is_named_by_its_index() -> None:
    with pytest.raises(ClassifyRefused) as refused:
        decode_upload(b"not an image", 3, max_pixels=10_000)
    assert refused.value.status == 422 and refused.value.message.startswith("image 3 ")
