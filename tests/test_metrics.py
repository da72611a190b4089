"""Scores and baselines against values computed by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kronos_tasks.evaluation import metrics


def test_mae_mape_and_skill():
    pred, actual = [10.0, 12.0, 9.0], [11.0, 12.0, 6.0]
    assert metrics.mae(pred, actual) == pytest.approx((1 + 0 + 3) / 3)
    assert metrics.mape(pred, actual) == pytest.approx((1 / 11 + 0 + 3 / 6) / 3 * 100)
    assert metrics.mape([1.0, 2.0], [0.0, 4.0]) == pytest.approx(50.0)  # the zero actual is left out
    assert metrics.skill(1.0, 4.0) == pytest.approx(0.75)
    assert metrics.skill(4.0, 2.0) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="finite"):
        metrics.mae([1.0, float("nan")], [1.0, 2.0])


def test_direction_accuracy_with_wilson_interval():
    # last 10: forecast up, up, down, down; outcome up, down, down, up -> 2 of 4 right.
    result = metrics.direction_accuracy([11, 12, 9, 8], [11, 9, 9, 12], [10, 10, 10, 10])
    assert result.value == 0.5 and result.count == 4
    # Wilson 95% for 2/4: centre (0.5 + z^2/8)/(1 + z^2/4), half = z*sqrt(1/16 + z^2/64)/(1 + z^2/4)
    z = 1.959963984540054
    centre = (0.5 + z * z / 8) / (1 + z * z / 4)
    half = z * math.sqrt(0.25 / 4 + z * z / 64) / (1 + z * z / 4)
    assert result.low == pytest.approx(centre - half) and result.high == pytest.approx(centre + half)
    assert result.low == pytest.approx(0.1500, abs=1e-4) and result.high == pytest.approx(0.8500, abs=1e-4)


def test_pinball_loss():
    actual = np.array([10.0, 10.0])
    quantiles = {0.1: np.array([9.0, 11.0]), 0.9: np.array([11.0, 12.0])}
    # q=0.1: y-p = 1 -> 0.1; y-p = -1 -> 0.9.  q=0.9: y-p = -1 -> 0.1; y-p = -2 -> 0.2.
    assert metrics.pinball(quantiles, actual) == pytest.approx(((0.1 + 0.9) / 2 + (0.1 + 0.2) / 2) / 2)


def test_crps_from_samples():
    # Samples {0, 2}, outcome 1: E|X-y| = 1, E|X-X'| = (0 + 2 + 2 + 0)/4 = 1 -> CRPS = 1 - 0.5 = 0.5.
    assert metrics.crps_samples(np.array([[0.0], [2.0]]), np.array([1.0])) == pytest.approx(0.5)
    # A point forecast's CRPS is its absolute error.
    assert metrics.crps_samples(np.array([[3.0], [3.0]]), np.array([1.0])) == pytest.approx(2.0)


def test_coverage_brier_and_reliability():
    assert metrics.coverage([1, 1, 1, 1], [3, 3, 3, 3], [0, 1, 2, 4]) == pytest.approx(0.5)
    assert metrics.brier([0.8, 0.3], [1.0, 0.0]) == pytest.approx((0.04 + 0.09) / 2)
    table = metrics.reliability([0.05, 0.15, 0.12, 0.95, 1.0], [0, 1, 0, 1, 1], bins=10)
    assert table[0]["count"] == 1 and table[0]["observed"] == 0.0
    assert table[1]["count"] == 2 and table[1]["mean_forecast"] == pytest.approx(0.135) and table[1]["observed"] == 0.5
    assert table[9]["count"] == 2 and table[9]["observed"] == 1.0  # p = 1.0 falls in the last bin
    assert sum(b["count"] for b in table) == 5


def test_baselines():
    history = np.array([1.0, 2.0, 4.0, 7.0])
    assert metrics.persistence(history, 3).tolist() == [7.0, 7.0, 7.0]
    assert metrics.drift(history, 2).tolist() == pytest.approx([9.0, 11.0])  # slope (7-1)/3 = 2
    assert metrics.seasonal_naive(history, 3, period=2).tolist() == [4.0, 7.0, 4.0]
    with pytest.raises(ValueError, match="one period"):
        metrics.seasonal_naive(history, 3, period=5)
