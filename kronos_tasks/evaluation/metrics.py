"""Scores of forecasts against the bars that arrived, and the naive baselines they must beat.

Conventions: arrays are aligned element by element; ``last`` is the value at the forecast origin; a
"direction" is the sign of (value - last), and ties (no change) count as not up. All functions ignore
nothing silently: non-finite inputs raise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _arrays(*values) -> list[np.ndarray]:
    out = [np.asarray(v, dtype=float) for v in values]
    for array in out:
        if not np.isfinite(array).all():
            raise ValueError("scores need finite values; drop missing bars before scoring.")
    return out


def mae(pred, actual) -> float:
    pred, actual = _arrays(pred, actual)
    return float(np.mean(np.abs(pred - actual)))


def mape(pred, actual) -> float:
    """Mean absolute percentage error in percent, over the points whose actual value is not zero."""
    pred, actual = _arrays(pred, actual)
    keep = actual != 0
    if not keep.any():
        return float("nan")
    return float(np.mean(np.abs((pred[keep] - actual[keep]) / actual[keep])) * 100)


def skill(model_error: float, baseline_error: float) -> float:
    """1 - model / baseline: > 0 beats the baseline, 0 ties it, < 0 loses to it."""
    if baseline_error == 0:
        return 0.0 if model_error == 0 else float("-inf")
    return 1.0 - model_error / baseline_error


@dataclass(frozen=True)
class Proportion:
    value: float
    low: float
    high: float
    count: int


def wilson(successes: int, count: int, z: float = 1.959963984540054) -> Proportion:
    """A proportion with its Wilson score interval (95% by default)."""
    if count == 0:
        return Proportion(float("nan"), float("nan"), float("nan"), 0)
    p = successes / count
    denominator = 1 + z * z / count
    centre = (p + z * z / (2 * count)) / denominator
    half = z * math.sqrt(p * (1 - p) / count + z * z / (4 * count * count)) / denominator
    return Proportion(p, max(0.0, centre - half), min(1.0, centre + half), count)


def direction_accuracy(pred, actual, last) -> Proportion:
    """Share of points where the forecast and the outcome move the same way from ``last``, with its interval."""
    pred, actual, last = _arrays(pred, actual, last)
    hits = int(np.sum((pred > last) == (actual > last)))
    return wilson(hits, pred.size)


def pinball(quantiles: dict[float, np.ndarray], actual) -> float:
    """Mean pinball (quantile) loss over the levels and points."""
    (actual,) = _arrays(actual)
    losses = []
    for level, pred in quantiles.items():
        (pred,) = _arrays(pred)
        diff = actual - pred
        losses.append(np.mean(np.maximum(level * diff, (level - 1) * diff)))
    return float(np.mean(losses))


def band_scores(quantiles: dict[float, np.ndarray], actual) -> dict[str, float]:
    """Coverage of the widest central band of quantile forecasts {level: values} (with its Wilson interval),
    its nominal share and the mean pinball loss over the levels."""
    levels = sorted(quantiles)
    low, high, actual = _arrays(quantiles[levels[0]], quantiles[levels[-1]], actual)
    interval = wilson(int(np.sum((actual >= low) & (actual <= high))), actual.size)
    return {
        "nominal": levels[-1] - levels[0],
        "coverage": interval.value,
        "coverage_low": interval.low,
        "coverage_high": interval.high,
        "pinball": pinball(quantiles, actual),
    }


def crps_samples(samples, actual) -> float:
    """CRPS from sample paths ``samples`` [S, ...] against ``actual`` [...]: E|X - y| - E|X - X'| / 2, averaged."""
    samples, actual = _arrays(samples, actual)
    # Both terms are means over every target, so they are averaged over everything at once.
    accuracy = np.mean(np.abs(samples - actual[None]))
    spread = np.mean(np.abs(samples[:, None] - samples[None, :]))
    return float(accuracy - 0.5 * spread)


def coverage(low, high, actual) -> float:
    """Share of outcomes inside [low, high]."""
    low, high, actual = _arrays(low, high, actual)
    return float(np.mean((actual >= low) & (actual <= high)))


def brier(prob_up, outcome_up) -> float:
    prob_up, outcome_up = _arrays(prob_up, outcome_up)
    return float(np.mean((prob_up - outcome_up) ** 2))


def reliability(prob_up, outcome_up, bins: int = 10) -> list[dict]:
    """Calibration table: per bin of forecast probability, its count, mean forecast and observed frequency."""
    prob_up, outcome_up = _arrays(prob_up, outcome_up)
    index = np.minimum((prob_up * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        mask = index == b
        table.append(
            {
                "bin_low": b / bins,
                "bin_high": (b + 1) / bins,
                "count": int(mask.sum()),
                "mean_forecast": float(prob_up[mask].mean()) if mask.any() else float("nan"),
                "observed": float(outcome_up[mask].mean()) if mask.any() else float("nan"),
            }
        )
    return table


def json_safe(value):
    """``value`` with every non-finite float (NaN, inf) replaced by None, recursively: JSON and XCom accept it."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# -- baselines ------------------------------------------------------------------------------------------------


def persistence(history, horizon: int) -> np.ndarray:
    """The last value carried forward."""
    (history,) = _arrays(history)
    return np.full(horizon, history[-1])


def drift(history, horizon: int) -> np.ndarray:
    """The last value plus the window's average change per bar, extended."""
    (history,) = _arrays(history)
    slope = (history[-1] - history[0]) / (len(history) - 1) if len(history) > 1 else 0.0
    return history[-1] + slope * np.arange(1, horizon + 1)


def seasonal_naive(history, horizon: int, period: int) -> np.ndarray:
    """The value one period (for intraday bars: one session) earlier, repeated over the horizon."""
    (history,) = _arrays(history)
    if period < 1 or len(history) < period:
        raise ValueError(f"seasonal naive needs at least one period ({period} bars) of history.")
    cycle = history[-period:]
    return np.array([cycle[h % period] for h in range(horizon)])


HISTVOL_WINDOW = 20  # closes' log returns the historical-volatility band reads (Kronos issue #269's HistVol20)


def histvol_sigma(history, window: int = HISTVOL_WINDOW) -> float:
    """Standard deviation of the last ``window`` log returns of ``history`` (closes); 0 with too few."""
    (history,) = _arrays(history)
    returns = np.diff(np.log(history[-(window + 1) :]))
    returns = returns[np.isfinite(returns)]
    return float(np.std(returns, ddof=1)) if len(returns) > 1 else 0.0


def histvol_band(last: float, sigma: float, horizon: int, levels) -> dict[float, np.ndarray]:
    """The historical-volatility baseline's quantiles per step: a normal around the last close whose standard
    deviation grows as ``last * sigma * sqrt(step)`` -> {level: values [horizon]}."""
    from statistics import NormalDist

    spread = last * sigma * np.sqrt(np.arange(1, horizon + 1))
    return {q: last + NormalDist().inv_cdf(q) * spread for q in levels}


def crps_normal(mean, sd, actual) -> float:
    """Mean CRPS of normal forecasts N(mean, sd^2) (closed form); sd 0 reduces to the absolute error."""
    from statistics import NormalDist

    mean, sd, actual = _arrays(mean, sd, actual)
    absolute = np.abs(actual - mean)
    positive = sd > 0
    z = np.where(positive, (actual - mean) / np.where(positive, sd, 1), 0.0)
    normal = NormalDist()
    cdf = np.array([normal.cdf(v) for v in z])
    pdf = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi)
    scores = np.where(positive, sd * (z * (2 * cdf - 1) + 2 * pdf - 1 / np.sqrt(np.pi)), absolute)
    return float(np.mean(scores))
