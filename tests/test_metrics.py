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


def test_historical_volatility_reads_the_last_window_of_log_returns():
    closes = np.exp(np.cumsum([0.0, 0.01, -0.02, 0.03, 0.5, -0.01, 0.02, 0.0]))  # log returns after the first
    returns = [0.01, -0.02, 0.03, 0.5, -0.01, 0.02, 0.0]
    last_four = returns[-4:]
    mean = sum(last_four) / 4
    want = math.sqrt(sum((r - mean) ** 2 for r in last_four) / 3)  # sample deviation, n - 1
    assert metrics.histvol_sigma(closes, window=4) == pytest.approx(want, rel=1e-9)
    assert metrics.histvol_sigma(closes) == pytest.approx(np.std(returns, ddof=1), rel=1e-9)  # all 7 < 20
    with_gap = closes.copy()
    with_gap[2] = 0.0  # no log return to or from a zero close: both are dropped, the other five count
    kept = [0.01, 0.5, -0.01, 0.02, 0.0]
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = metrics.histvol_sigma(with_gap)
    assert sigma == pytest.approx(np.std(kept, ddof=1), rel=1e-9)
    assert metrics.histvol_sigma([5.0, 5.1]) == 0.0  # one return has no spread
    two = metrics.histvol_sigma([5.0, 5.1, 5.0])
    assert two == pytest.approx(np.std(np.diff(np.log([5.0, 5.1, 5.0])), ddof=1)) and two > 0


def test_historical_volatility_band_widens_with_the_square_root_of_the_step():
    band = metrics.histvol_band(100.0, 0.02, 4, [0.1, 0.5, 0.9])
    z90 = 1.2815515655446004  # the standard normal's 90% quantile
    assert band[0.5].tolist() == [100.0] * 4
    assert band[0.9] == pytest.approx([100 + z90 * 2 * math.sqrt(s) for s in (1, 2, 3, 4)], rel=1e-12)
    assert band[0.1] == pytest.approx([100 - z90 * 2 * math.sqrt(s) for s in (1, 2, 3, 4)], rel=1e-12)


def test_scores_refuse_missing_values_and_read_integers_as_numbers():
    message = r"^scores need finite values; drop missing bars before scoring\.$"
    with pytest.raises(ValueError, match=message):
        metrics.mae([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match=message):  # a missing value read from JSON or a database
        metrics.mae([1.0, None], [1.0, 2.0])
    assert metrics.mape([1, 3], [2, 4]) == pytest.approx(37.5)  # integer inputs: no integer division
    assert math.isnan(metrics.mape([1.0, 2.0], [0.0, 0.0]))  # no non-zero actual: undefined, not 0


def test_skill_against_a_perfect_baseline():
    assert metrics.skill(0.0, 0.0) == 0.0  # both perfect: a tie
    assert metrics.skill(0.5, 0.0) == float("-inf")  # any error loses to a perfect baseline
    assert metrics.skill(1.0, 4.0) == 0.75


def test_wilson_interval_at_the_edges():
    empty = metrics.wilson(0, 0)
    assert empty.count == 0 and all(math.isnan(v) for v in (empty.value, empty.low, empty.high))
    one = metrics.wilson(1, 1)
    assert one.value == 1.0 and one.high == 1.0 and one.low == pytest.approx(0.2065, abs=1e-4) and one.count == 1
    none = metrics.wilson(0, 1)
    assert none.low == 0.0 and none.high == pytest.approx(0.7935, abs=1e-4)


def test_a_flat_forecast_counts_as_not_up():
    hit = metrics.direction_accuracy([10.0, 10.0], [9.0, 11.0], [10.0, 10.0])  # down matches flat, up does not
    assert (hit.value, hit.count) == (0.5, 2)
    assert metrics.direction_accuracy([10.0], [9.0], [10.0]).value == 1.0


def test_crps_of_sample_paths_equals_the_pairwise_definition():
    rng = np.random.default_rng(5)
    samples, actual = rng.normal(size=(6, 3)), rng.normal(size=3)
    want = np.mean(
        [
            sum(abs(x - actual[t]) for x in samples[:, t]) / 6
            - 0.5 * sum(abs(x - y) for x in samples[:, t] for y in samples[:, t]) / 36
            for t in range(3)
        ]
    )
    assert metrics.crps_samples(samples, actual) == pytest.approx(want, rel=1e-12)


def test_coverage_includes_both_ends_of_the_band():
    assert metrics.coverage([1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [1.0, 2.0, 2.5]) == pytest.approx(2 / 3)


def test_reliability_bins_are_labelled_and_empty_bins_have_no_rates():
    table = metrics.reliability([0.05, 0.95], [0.0, 1.0], bins=4)
    assert [(b["bin_low"], b["bin_high"]) for b in table] == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    assert math.isnan(table[1]["mean_forecast"]) and math.isnan(table[1]["observed"]) and table[1]["count"] == 0


def test_json_safe_replaces_non_finite_numbers_at_any_depth():
    value = {"a": [1.5, float("nan"), (np.float32(2.0), np.int64(3))], "b": float("inf"), "c": "x"}
    assert metrics.json_safe(value) == {"a": [1.5, None, [2.0, 3]], "b": None, "c": "x"}
    assert type(metrics.json_safe(np.int64(3))) is int


def test_baselines_at_their_edges():
    assert metrics.drift([5.0], 2).tolist() == [5.0, 5.0]  # one bar: no slope
    assert metrics.drift([1.0, 3.0], 1).tolist() == [5.0]  # two bars: one step of 2
    assert metrics.seasonal_naive([1.0, 2.0, 3.0], 4, period=1).tolist() == [3.0] * 4
    assert metrics.seasonal_naive([1.0, 2.0, 3.0, 4.0], 3, period=2).tolist() == [3.0, 4.0, 3.0]
    assert metrics.seasonal_naive([1.0, 2.0], 2, period=2).tolist() == [1.0, 2.0]  # exactly one period
    with pytest.raises(ValueError, match="at least one period"):
        metrics.seasonal_naive([1.0], 2, period=0)


def test_band_scores_of_the_widest_central_band():
    quantiles = {0.9: np.array([2.0, 2.0, 2.0]), 0.1: np.array([1.0, 1.0, 1.0]), 0.5: np.array([1.5, 1.5, 1.5])}
    got = metrics.band_scores(quantiles, [1.0, 2.0, 3.0])  # both ends count as inside
    interval = metrics.wilson(2, 3)
    assert got == {
        "nominal": pytest.approx(0.8),
        "coverage": pytest.approx(2 / 3),
        "coverage_low": interval.low,
        "coverage_high": interval.high,
        "pinball": metrics.pinball(quantiles, [1.0, 2.0, 3.0]),
    }
