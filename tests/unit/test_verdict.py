"""The closed-form verdict of the scenarios (scenarios/bnm_common.py), without TensorFlow."""

from __future__ import annotations

import math

import pytest


def test_expected_statistics_follow_the_closed_form(common) -> None:
    mean, variance = common.batch_statistics()
    assert (mean, variance) == (1.5, 1.25)  # x = 0, 1, 2, 3; population variance as BN computes it
    expected_mean, expected_variance = common.expected_statistics(100, 0.99)
    assert expected_mean == pytest.approx(1.5 * (1 - 0.99**100))
    assert expected_variance == pytest.approx(1.25 + (1 - 1.25) * 0.99**100)
    assert common.expected_statistics(0) == (0.0, 1.0)


@pytest.mark.parametrize("steps", [1, 7, 100, 1000])
def test_effective_updates_inverts_the_closed_form(common, steps: int) -> None:
    mean, _ = common.expected_statistics(steps)
    assert common.effective_updates(mean) == pytest.approx(steps, abs=1e-6)


def test_float32_result_of_tf_is_updated(common) -> None:
    # The numbers TF 1.15.5 reported for tf.layers BN after 100 steps (float32 variables).
    assert common.verdict(100, 0.9509515762329102, 1.158491849899292) == (
        "updated", "matches the closed form for 100 updates")


def test_initial_values_are_stale(common) -> None:
    status, reason = common.verdict(100, 0.0, 1.0)
    assert status == "stale" and "initial values" in reason


def test_double_updates_are_wrong_and_say_so(common) -> None:
    mean, variance = common.expected_statistics(200)
    status, reason = common.verdict(100, mean, variance)
    assert status == "wrong"
    assert reason == "200.00 effective updates for 100 steps (2.00x, extra)"


def test_partial_updates_are_wrong(common) -> None:
    mean, variance = common.expected_statistics(37)
    status, reason = common.verdict(100, mean, variance)
    assert status == "wrong" and "37.00 effective updates" in reason and "partial" in reason


def test_right_mean_wrong_variance_is_wrong(common) -> None:
    mean, _ = common.expected_statistics(100)
    status, reason = common.verdict(100, mean, 1.42)  # Bessel-corrected variance would give this
    assert status == "wrong" and "moving variance" in reason


def test_mean_beyond_the_batch_mean_has_no_update_count(common) -> None:
    assert common.effective_updates(1.6) is None
    assert common.verdict(100, 1.6, 1.2)[0] == "wrong"


def test_one_update_off_is_not_updated(common) -> None:
    mean, variance = common.expected_statistics(99)
    assert common.verdict(100, mean, variance)[0] == "wrong"
    assert math.isclose(common.effective_updates(mean), 99, abs_tol=1e-6)
