"""Prompt templates are plain text with one placeholder: nothing in them is interpreted."""

from __future__ import annotations

import pytest

from saft_core.config import DataConfig, fill_template
from saft_core.errors import ConfigError


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("a photo of a {}.", "a photo of a cat."),
        ("{:>999999999} {}", "{:>999999999} cat"),  # str.format would pad to a gigabyte; here it is text
        ("{0.__class__} {}", "{0.__class__} cat"),  # and an attribute lookup
        ("{{}} literal", "{cat} literal"),  # "{{}}" holds one "{}"; the outer braces are text
        ("{}", "cat"),
    ],
)
def test_fill_template_substitutes_and_interprets_nothing(template: str, expected: str) -> None:
    assert fill_template(template, "cat") == expected


def test_the_class_name_is_not_interpreted_either() -> None:
    assert fill_template("a {}.", "{0} {}") == "a {0} {}."


@pytest.mark.parametrize("template", ["no placeholder", "{} and {}", "{0}", "{:>10}"])
def test_a_template_needs_exactly_one_placeholder(template: str) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        DataConfig(train=".", templates=(template,))
