"""Calibration of quantiles and P(up): the finite-sample coverage guarantee on exchangeable residuals, the
isotonic P(up) map, and a fit that reads nothing after its cut."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import reference
from kronos_tasks.evaluation.calibration import (
    MIN_ORIGINS_PER_SYMBOL,
    MIN_PROBABILITY_POINTS,
    Calibration,
    annotate,
    apply,
    conformal_offset,
    fit,
    holdout,
    isotonic,
    split,
)

LEVELS = [0.1, 0.5, 0.9]


def rows(n: int, rng: np.random.Generator, steps: int = 1, start: str = "2024-01-01") -> pd.DataFrame:
    """n origins of one symbol whose raw bands are far too narrow and biased: y = last (1 + 0.02 e),
    e ~ Student t(5), raw quantiles last (1 + 0.002 z_q) + 0.01 last."""
    origins = pd.date_range(start, periods=n, freq="D", tz="UTC")
    frames = []
    for step in range(1, steps + 1):
        last = 100 * np.exp(rng.normal(0, 0.1, n))
        actual = last * (1 + 0.02 * rng.standard_t(5, n) * math.sqrt(step))
        frame = pd.DataFrame(
            {
                "symbol": "S",
                "origin_ts": origins,
                "step": step,
                "target_ts": origins + pd.Timedelta(days=step),
                "last": last,
                "actual": actual,
                "p_up": np.clip(0.5 + (actual - last) / last * rng.uniform(0, 10, n), 0, 1),
                "hv_sd": last * rng.uniform(0.01, 0.03, n) * math.sqrt(step),
            }
        )
        for q, z in zip(LEVELS, (-1.2816, 0.0, 1.2816)):
            frame[f"q{q:g}"] = last * (1 + 0.002 * z) + 0.01 * last
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_band_offset_widens_both_sides_by_the_n_plus_one_ranked_score():
    from kronos_tasks.evaluation.calibration import band_offset, pairs, unpaired

    group = pd.DataFrame(
        {"last": 10.0, "step": 1, "hv_sd": 10.0, "actual": np.arange(1.0, 10.0), "q0.1": 5.0, "q0.9": 5.0}
    )
    # spread 10 x 1 x 1 = 10; scores max(5 - y, y - 5) / 10 sorted: 0, .1, .1, .2, .2, .3, .3, .4, .4; k = 8: 0.4
    assert band_offset(group, 0.1, 0.9) == pytest.approx(0.4)
    assert band_offset(group.iloc[1:8], 0.1, 0.9) == pytest.approx(0.3)  # n = 7: k = ceil(8 * 0.8) = 7
    assert band_offset(group.iloc[:3], 0.1, 0.9) is None  # ceil(4 * 0.8) = 4 > n = 3
    assert pairs([0.1, 0.5, 0.9]) == [(0.1, 0.9)] and unpaired([0.1, 0.5, 0.9]) == [0.5]
    assert pairs([0.05, 0.25, 0.75, 0.95]) == [(0.05, 0.95), (0.25, 0.75)] and unpaired([0.2, 0.7]) == [0.2, 0.7]


def test_conformal_offset_uses_the_n_plus_one_rank_and_refuses_levels_it_cannot_guarantee():
    residuals = np.arange(1.0, 10.0)  # n = 9
    assert conformal_offset(residuals, 0.9) == 9.0  # ceil(10 * 0.9) = 9th smallest
    assert conformal_offset(residuals, 0.5) == 5.0  # ceil(10 * 0.5) = 5th
    assert conformal_offset(residuals, 0.1) == 1.0  # floor(10 * 0.1) = 1st
    assert conformal_offset(residuals, 0.95) is None  # ceil(10 * 0.95) = 10 > n: no finite guarantee
    assert conformal_offset(residuals, 0.05) is None  # floor(10 * 0.05) = 0
    assert conformal_offset(np.array([np.nan, 1.0]), 0.5) == 1.0  # non-finite residuals are left out


def test_calibrated_band_covers_its_nominal_share_over_1000_exchangeable_trials():
    rng = np.random.default_rng(0)
    n, trials = 99, 1000
    covered, below_median = [], []
    raw_covered = []
    for _ in range(trials):
        data = rows(n + 1, rng)
        calibration = fit(data.iloc[:n], LEVELS, "m", "1d")
        test = apply(data.iloc[n:], calibration).iloc[0]
        covered.append(test["q0.1"] <= test["actual"] <= test["q0.9"])
        below_median.append(test["actual"] <= test["q0.5"])
        raw_covered.append(test["raw_q0.1"] <= test["actual"] <= test["raw_q0.9"])
    tolerance = 3 * math.sqrt(0.8 * 0.2 / trials)
    # Split conformal: 0.8 <= P(cover) <= 0.8 + 1 / (n + 1) for continuous scores.
    assert 0.8 - tolerance <= np.mean(covered) <= 0.8 + 1 / (n + 1) + tolerance
    # The median, shifted one-sidedly: P(y <= q'_0.5) >= 0.5 (at most 0.5 + 1 / (n + 1)).
    assert (
        0.5 - 3 * math.sqrt(0.25 / trials) <= np.mean(below_median) <= 0.5 + 1 / (n + 1) + 3 * math.sqrt(0.25 / trials)
    )
    assert np.mean(raw_covered) < 0.3  # the raw band was far too narrow


def test_per_step_shifts_follow_each_horizon_and_scopes_say_pooled_or_per_symbol():
    rng = np.random.default_rng(1)
    data = rows(60, rng, steps=3)
    calibration = fit(data, LEVELS, "m", "1d")
    upper, lower = calibration.shifts["S"]["0.9"], calibration.shifts["S"]["0.1"]
    assert calibration.fitted_on["per_symbol"] == ["S"] and len(upper) == 3
    assert upper[0] < upper[2]  # wider residuals further ahead: a wider band
    assert lower == [-u for u in upper]  # both sides widened alike
    few = fit(data[data["origin_ts"] < data["origin_ts"].min() + pd.Timedelta(days=20)], LEVELS, "m", "1d")
    assert few.fitted_on["per_symbol"] == [] and set(few.shifts) == {"*"}  # under 50 origins: pooled only


def test_isotonic_probability_map_is_monotone_and_identity_below_the_minimum_count():
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    y = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    knots, values = isotonic(x, y)
    assert values == sorted(values) and values[0] == 0.0 and values[-1] == 1.0
    assert values[2] == values[3] == pytest.approx(0.5)  # the violators 1, 0 pooled
    rng = np.random.default_rng(2)
    small = rows(MIN_PROBABILITY_POINTS - 1, rng)
    assert fit(small, LEVELS, "m", "1d").prob_up(0.37) == 0.37
    large = fit(rows(400, rng), LEVELS, "m", "1d")
    grid = np.linspace(0, 1, 21)
    mapped = [large.prob_up(p) for p in grid]
    assert mapped == sorted(mapped) and mapped != list(grid)


def test_the_holdout_fit_reads_nothing_after_its_cut():
    rng = np.random.default_rng(3)
    data = rows(120, rng, steps=2)
    fit_rows, evaluation, cut = split(data)
    assert (pd.to_datetime(fit_rows["target_ts"]) <= cut).all() and (
        pd.to_datetime(evaluation["origin_ts"]) > cut
    ).all()
    before = fit(fit_rows, LEVELS, "m", "1d").sha256
    later = pd.to_datetime(data["target_ts"]) > cut
    changed = data.copy()
    changed.loc[later, "actual"] *= 3  # every outcome after the cut rewritten
    changed.loc[later, "p_up"] = 0.99
    assert fit(split(changed)[0], LEVELS, "m", "1d").sha256 == before
    data["crps"] = 1.0
    for q, z in zip(LEVELS, (-1.2816, 0.0, 1.2816)):
        data[f"hv_q{q:g}"] = data["last"] * (1 + 0.02 * z)
    report = holdout(data, LEVELS, "m", "1d")
    assert report["raw"]["coverage"] < 0.3 and abs(report["calibrated"]["coverage"] - 0.8) < 0.12
    assert (
        report["calibrated"]["coverage_low"]
        <= report["calibrated"]["coverage"]
        <= report["calibrated"]["coverage_high"]
    )


def _forecast_columns(symbol: str, raw: dict[str, float], p_up: float) -> dict[str, np.ndarray]:
    """forecast_columns' shape for two features over two steps (feature-major), quantiles ``raw`` x step."""
    feature = np.array(["close", "close", "volume", "volume"], dtype=object)
    step = np.array([1, 2, 1, 2])
    return {
        "symbol": np.full(4, symbol, dtype=object),
        "feature": feature,
        "step": step,
        "quantiles": np.array([[v * s for v in raw.values()] for s in step]),
        "prob_above_last": np.full(4, p_up),
        "levels": np.array(list(raw), dtype=object),
    }


def _bands(columns: dict, name: str) -> list[dict | None]:
    """A band column of ``annotate`` as the row values stored: {level: value}, None where the row has none."""
    keys = columns["calibrated_levels" if name == "calibrated_quantiles" else "baseline_levels"]
    return [
        dict(zip(keys, values.tolist())) if present else None
        for values, present in zip(columns[name], columns[f"{name}_present"])
    ]


def test_daily_rows_get_baseline_and_calibrated_bands_on_close_only():
    close = np.exp(np.cumsum(np.r_[0.0, np.tile([0.01, -0.01], 15)])) * 100
    sigma = float(np.std(np.diff(np.log(close[-21:])), ddof=1))
    calibration = Calibration(
        model="m/1",
        interval="1d",
        levels=LEVELS,
        steps=2,
        shifts={
            "*": {"0.1": [-0.5, None], "0.5": [0.25, 0.0], "0.9": [0.5, 1.0]},
            "A": {"0.1": [-2.0, -2.0], "0.5": [0.0, 0.0], "0.9": [2.0, 2.0]},
        },
        counts={"*": 60, "A": 40},
        probability={"x": [0.2, 0.8], "y": [0.4, 0.6]},
    )
    assert Calibration.from_dict(calibration.describe()) == calibration
    raw = {"0.9": 110.0, "0.1": 90.0, "0.5": 100.0}  # the forecast's own level order need not be ascending
    last = float(close[-1])

    plain = annotate(_forecast_columns("B", raw, 0.5), close, None, LEVELS)
    assert not plain["calibrated_quantiles_present"].any()
    baseline = _bands(plain, "baseline_quantiles")
    assert baseline[2:] == [None, None]  # volume rows
    for step, band in zip((1, 2), baseline[:2]):
        z = 1.2815515655446004 * last * sigma * math.sqrt(step)
        assert band == pytest.approx({"0.1": last - z, "0.5": last, "0.9": last + z})

    pooled, own = (annotate(_forecast_columns(s, raw, 0.5), close, calibration, LEVELS) for s in ("B", "A"))
    unit1, unit2 = last * sigma, last * sigma * math.sqrt(2)
    calibrated = _bands(pooled, "calibrated_quantiles")
    assert list(calibrated[0]) == ["0.1", "0.5", "0.9"]
    assert calibrated[0] == pytest.approx(
        {"0.1": 90 - 0.5 * unit1, "0.5": 100 + 0.25 * unit1, "0.9": 110 + 0.5 * unit1}
    )
    assert calibrated[1] == pytest.approx({"0.1": 180.0, "0.5": 200.0, "0.9": 220 + unit2})  # no 0.1 shift at step 2
    assert calibrated[2:] == [None, None]
    assert pooled["calibrated_prob_above_last"][0] == pytest.approx(0.5)  # halfway along the map
    assert _bands(own, "calibrated_quantiles")[0] == pytest.approx(
        {"0.1": 90 - 2 * unit1, "0.5": 100.0, "0.9": 110 + 2 * unit1}  # its own shifts, not the pooled ones
    )


def test_calibrated_quantiles_do_not_cross():
    close = np.exp(np.cumsum(np.r_[0.0, np.tile([0.01, -0.01], 15)])) * 100
    calibration = Calibration(
        model="m/1",
        interval="1d",
        levels=LEVELS,
        steps=2,
        shifts={"*": {"0.1": [50.0, 50.0], "0.5": [0.0, 0.0], "0.9": [-50.0, -50.0]}},
        counts={"*": 60},
        probability={},
    )
    columns = annotate(
        _forecast_columns(
            "B",
            {"0.1": 90.0, "0.5": 100.0, "0.9": 110.0},
            0.7,
        ),
        close,
        calibration,
        LEVELS,
    )
    low, middle, high = columns["calibrated_quantiles"][0]
    assert low <= middle <= high and low < 90 < 110 < high  # the shifts swapped 0.1 and 0.9: sorted back
    assert columns["calibrated_prob_above_last"][0] == 0.7  # no probability map: raw


def _blocks(knots: list[float], values: list[float]) -> list[tuple[float, float, float]]:
    """(first x, last x, value) per block of an isotonic fit."""
    assert len(knots) == len(values) and len(knots) % 2 == 0
    assert values[0::2] == values[1::2]
    return list(zip(knots[0::2], knots[1::2], values[0::2]))


@pytest.mark.parametrize("seed", range(5))
def test_isotonic_fit_equals_the_max_min_formula_with_tied_x_pooled_in_any_row_order(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 17, 300) / 16  # raw P(up) of 16 sample paths: 17 values, many ties
    y = (rng.random(300) < 0.2 + 0.6 * x).astype(float)
    blocks = _blocks(*isotonic(x, y))
    xs, fitted = reference.isotonic_values(x, y)
    for u, expected in zip(xs, fitted):  # each distinct x in exactly one block, at the reference's value
        [value] = [v for first, last, v in blocks if first <= u <= last]
        assert value == pytest.approx(expected, abs=1e-12)
    assert [b[0] for b in blocks][0] == xs[0] and blocks[-1][1] == xs[-1]
    for (_, last, value), (first, _, after) in zip(blocks, blocks[1:]):
        assert last < first and value < after  # maximal blocks, strictly rising
    order = rng.permutation(len(x))
    assert isotonic(x[order], y[order]) == isotonic(x, y)


def test_isotonic_fit_of_flat_and_single_point_data_is_one_block():
    assert isotonic(np.array([0.3, 0.1, 0.2]), np.array([1.0, 1.0, 1.0])) == ([0.1, 0.3], [1.0, 1.0])
    assert isotonic(np.array([0.5, 0.5, 0.25]), np.array([1.0, 0.0, 1.0])) == ([0.25, 0.5], [2 / 3, 2 / 3])
    assert isotonic(np.array([0.4]), np.array([0.0])) == ([0.4, 0.4], [0.0, 0.0])


def test_stored_description_names_its_format_and_method_and_reads_back():
    calibration = fit(rows(120, np.random.default_rng(4)), LEVELS, "kronos-small", "1d")
    stored = calibration.describe()
    assert stored["format"] == 1
    assert stored["method"] == ("split-conformal per band and step (CQR) on scores / recent spread; isotonic P(up)")
    assert set(stored) == {
        "format", "method", "model", "interval", "levels", "steps", "shifts", "counts", "probability", "fitted_on"
    }  # fmt: skip
    assert Calibration.from_dict(stored) == calibration
    assert (stored["model"], stored["interval"], stored["levels"], stored["steps"]) == ("kronos-small", "1d", LEVELS, 1)


def test_split_cuts_at_the_middle_origin_across_time_zones():
    data = rows(5, np.random.default_rng(5), steps=2)
    fit_rows, evaluation, cut = split(data)
    origins = sorted(data["origin_ts"].unique())
    assert cut == origins[2]  # five origins: the third
    assert set(evaluation["origin_ts"]) == set(origins[3:])
    # everything known by the cut: step 1 of the first two origins reaches it exactly, step 2 of the second too
    known = data[data["target_ts"] <= origins[2]]
    assert len(known) == 3 and fit_rows.equals(known)
    zones = data.assign(
        origin_ts=[
            t.tz_convert("America/New_York" if i % 2 else "Asia/Shanghai") for i, t in enumerate(data["origin_ts"])
        ],
        target_ts=[t.tz_convert("Europe/London" if i % 3 else "Asia/Tokyo") for i, t in enumerate(data["target_ts"])],
    )  # symbols of several exchanges pooled, each in its own zone
    zoned_fit, zoned_evaluation, zoned_cut = split(zones)
    assert zoned_cut == cut and str(zoned_cut.tz) == "UTC"
    assert zoned_fit.index.equals(fit_rows.index) and zoned_evaluation.index.equals(evaluation.index)


def _crps_normal(mean, sd, actual) -> float:
    z = (actual - mean) / sd
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    pdf = np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
    return float(np.mean(sd * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))))


@pytest.mark.parametrize("symbols, origins", [(["S"], 60), (["A", "B"], 110)])
def test_holdout_report_scores_the_later_half_with_the_fit_of_the_earlier(symbols, origins):
    from kronos_tasks.evaluation.backtest import band_scores

    rng = np.random.default_rng(6)
    data = pd.concat([rows(origins, rng, steps=2).assign(symbol=s) for s in symbols], ignore_index=True)
    data["crps"] = rng.uniform(0.5, 2.0, len(data))
    for q, z in zip(LEVELS, (-1.2816, 0.0, 1.2816)):
        data[f"hv_q{q:g}"] = data["last"] * (1 + 0.015 * z)
    data.loc[data.index[-7:], "actual"] = data["last"]  # unchanged closes count as not up
    report = holdout(data, LEVELS, "m", "1d")

    fit_rows, evaluation, cut = split(data)
    calibrated = apply(evaluation, fit(fit_rows, LEVELS, "m", "1d"))
    up = (evaluation["actual"] > evaluation["last"]).to_numpy(float)
    middle = (origins - 1) // 2  # the cut: origins before it have both steps' outcomes known by then
    assert report == {
        "cut": cut.isoformat(),
        "fit_origins": middle * len(symbols),
        "evaluated_origins": (origins - 1 - middle) * len(symbols),
        "scope": "pooled" if middle < 50 else "per symbol: A, B",  # 50 origins of a symbol: its own fit
        "raw": band_scores(evaluation, LEVELS),
        "calibrated": band_scores(calibrated, LEVELS),
        "histvol": band_scores(evaluation, LEVELS, "hv_"),
        "brier": {
            "raw": pytest.approx(float(np.mean((evaluation["p_up"].to_numpy() - up) ** 2))),
            "calibrated": pytest.approx(float(np.mean((calibrated["p_up"].to_numpy() - up) ** 2))),
            "persistence": 0.25,
        },
        "crps": {
            "model": pytest.approx(evaluation["crps"].mean()),
            "histvol": pytest.approx(
                _crps_normal(
                    evaluation["last"].to_numpy(), evaluation["hv_sd"].to_numpy(), evaluation["actual"].to_numpy()
                )
            ),
            "persistence": pytest.approx(float(np.mean(np.abs(evaluation["last"] - evaluation["actual"])))),
        },
    }
    assert report["histvol"] != report["raw"]


def test_holdout_refuses_rows_with_nothing_known_by_the_cut():
    data = rows(9, np.random.default_rng(7))
    data["target_ts"] = data["origin_ts"] + pd.Timedelta(days=30)  # every outcome after the middle origin
    with pytest.raises(ValueError) as refused:
        holdout(data, LEVELS, "m", "1d")
    assert str(refused.value) == "a calibration holdout needs origins on both sides of the middle one"


def test_rank_boundaries_of_the_offsets():
    assert conformal_offset(np.arange(1.0, 11.0), 0.5) == 6.0  # n = 10: ceil(11 x 0.5) = 6th (the median rounds up)
    assert conformal_offset(np.arange(1.0, 19.0), 0.1) == 1.0  # n = 18: floor(19 x 0.1) = 1st
    from kronos_tasks.evaluation.calibration import band_offset

    group = pd.DataFrame(
        {"last": 10.0, "step": 1, "hv_sd": 10.0, "actual": [7.0, 9.0, 6.0], "q0.45": 5.0, "q0.55": 5.0}
    )
    assert band_offset(group, 0.45, 0.55) == pytest.approx(0.1)  # n = 3: ceil(4 x 0.1) = 1st of 0.1, 0.2, 0.4


def test_fit_records_what_it_saw_and_fits_every_step_and_level_it_can():
    rng = np.random.default_rng(8)
    data = rows(MIN_ORIGINS_PER_SYMBOL, rng, steps=3)  # exactly the origins a symbol needs for its own scope
    data = data[data["step"] != 2]  # a horizon without outcomes yet
    data.loc[data.index[:5], "actual"] = data["last"]  # unchanged closes: not up
    calibration = fit(data, LEVELS, "m", "1d")
    assert calibration.counts == {"*": MIN_ORIGINS_PER_SYMBOL, "S": MIN_ORIGINS_PER_SYMBOL}
    assert calibration.fitted_on == {
        "origins": MIN_ORIGINS_PER_SYMBOL,
        "points": len(data),
        "symbols": ["S"],
        "first_origin": data["origin_ts"].min().isoformat(),
        "last_origin": data["origin_ts"].max().isoformat(),
        "last_target": data["target_ts"].max().isoformat(),
        "per_symbol": ["S"],
    }
    for scope in ("*", "S"):
        for level in ("0.1", "0.5", "0.9"):
            shifts = calibration.shifts[scope][level]
            assert shifts[1] is None and shifts[0] is not None and shifts[2] is not None, (scope, level)
        for step in (1, 3):  # the median's one-sided shift, step by step
            group = data[data["step"] == step]
            residuals = ((group["actual"] - group["q0.5"]) / (group["hv_sd"])).to_numpy(float)
            assert calibration.shifts[scope]["0.5"][step - 1] == pytest.approx(conformal_offset(residuals, 0.5))
    # P(up) from exactly the minimum number of points, unchanged closes counted as not up
    assert len(data) == MIN_PROBABILITY_POINTS and calibration.probability is not None
    outcome = (data["actual"] > data["last"]).to_numpy(float)
    assert calibration.probability == dict(zip(("x", "y"), isotonic(data["p_up"].to_numpy(), outcome)))
    assert fit(data.iloc[:-1], LEVELS, "m", "1d").probability is None  # below the minimum: the identity


def test_bands_without_enough_origins_stay_raw_and_unknown_levels_or_steps_are_left_raw():
    few = fit(rows(3, np.random.default_rng(9)), LEVELS, "m", "1d")  # ceil(4 x 0.8) = 4 > 3 origins
    assert few.shifts["*"]["0.1"] == [None] and few.shifts["*"]["0.9"] == [None]
    assert few.quantile("S", 0.9, 1, raw=101.0, unit=2.0) == 101.0
    calibration = fit(rows(60, np.random.default_rng(10)), LEVELS, "m", "1d")
    shift = calibration.shifts["S"]["0.9"][0]
    assert calibration.quantile("S", 0.9, 1, raw=100.0, unit=2.0) == pytest.approx(100.0 + 2.0 * shift)
    assert calibration.quantile("S", 0.25, 1, raw=100.0, unit=2.0) == 100.0  # a level not fitted
    assert calibration.quantile("S", 0.9, 2, raw=100.0, unit=2.0) == 100.0  # a step beyond the fitted ones


def test_apply_uses_each_symbols_own_scope_and_keeps_the_raw_values():
    rng = np.random.default_rng(11)
    own = rows(60, rng).assign(symbol="OWN")
    pooled_only = rows(45, rng, start="2024-03-01").assign(symbol="FEW")
    calibration = fit(pd.concat([own, pooled_only], ignore_index=True), LEVELS, "m", "1d")
    assert set(calibration.shifts) == {"*", "OWN"} and calibration.probability is not None
    assert calibration.shifts["OWN"]["0.9"] != calibration.shifts["*"]["0.9"]
    test = pd.concat([own.iloc[:3], pooled_only.iloc[:3]], ignore_index=True)
    out = apply(test, calibration)
    units = test["hv_sd"].to_numpy()  # last x sigma x sqrt(1): the spread of a one-step forecast
    for i, symbol in enumerate(test["symbol"]):
        scope = "OWN" if symbol == "OWN" else "*"
        expected = sorted(test[f"q{q:g}"].iat[i] + calibration.shifts[scope][f"{q:g}"][0] * units[i] for q in LEVELS)
        assert out.loc[i, ["q0.1", "q0.5", "q0.9"]].tolist() == pytest.approx(expected)
    pd.testing.assert_series_equal(out["raw_p_up"], test["p_up"], check_names=False)
    assert out["p_up"].tolist() == [calibration.prob_up(p) for p in test["p_up"]] != test["p_up"].tolist()
    assert out["raw_q0.9"].tolist() == test["q0.9"].tolist()
