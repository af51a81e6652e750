import math

import pytest

from saft_core.errors import ConfigError
from saft_core.frontier import (
    ALPHA_GRID,
    RECOMMENDED,
    check_alphas,
    parse_alpha,
    recommend_alpha,
    resolve_alpha,
)


def test_recommends_smallest_alpha_within_one_standard_error():
    # best 0.5 on 100 images: se = 0.05; 0.46 at alpha 0.5 is within, 0.44 at 0.25 is not
    points = {0.0: 0.20, 0.25: 0.44, 0.5: 0.46, 0.75: 0.49, 1.0: 0.50}
    assert recommend_alpha(points, n=100) == 0.5


def test_more_validation_images_narrow_the_band():
    points = {0.0: 0.20, 0.25: 0.44, 0.5: 0.46, 0.75: 0.49, 1.0: 0.50}
    se = math.sqrt(0.25 / 10_000)
    assert se < 0.5 - 0.49
    assert recommend_alpha(points, n=10_000) == 1.0


def test_zero_shot_can_be_recommended_when_fine_tuning_does_not_help():
    assert recommend_alpha({0.0: 0.80, 0.5: 0.81, 1.0: 0.79}, n=50) == 0.0


def test_best_alpha_in_the_middle():
    assert recommend_alpha({0.0: 0.1, 0.25: 0.2, 0.5: 0.9, 0.75: 0.5, 1.0: 0.4}, n=1000) == 0.5


def test_nothing_to_recommend_without_validation():
    assert recommend_alpha({0.0: 0.3, 1.0: 0.4}, n=0) is None
    assert recommend_alpha({}, n=10) is None


def test_check_alphas_sorts_dedupes_and_refuses_out_of_range():
    assert check_alphas([1, 0.5, 0.5, 0]) == (0.0, 0.5, 1.0)
    assert check_alphas(ALPHA_GRID) == ALPHA_GRID
    for bad in ([], [1.5], [-0.1], [float("nan")], ["0.5"]):
        with pytest.raises(ConfigError):
            check_alphas(bad)


def test_an_alpha_choice_is_a_number_in_range_or_the_recommended_one():
    assert parse_alpha("0.25") == 0.25 and parse_alpha(" Recommended ") == RECOMMENDED
    for bad in ("1.5", "-0.1", "nan", "best", ""):
        with pytest.raises(ConfigError, match="or 'recommended'"):
            parse_alpha(bad)
    assert resolve_alpha(RECOMMENDED, 0.5) == 0.5
    assert resolve_alpha(RECOMMENDED, None) == 1.0  # trained without a validation split: the fine-tuned model
    assert resolve_alpha(0.75, 0.5) == 0.75
    with pytest.raises(ConfigError):
        resolve_alpha(2.0, 0.5)
