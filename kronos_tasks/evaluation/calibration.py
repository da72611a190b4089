"""Calibration of forecast quantiles and P(up) on held-back backtest origins, with a finite-sample guarantee.

Quantiles: split-conformal, per horizon step, on scores in units of each forecast's recent spread
``d = last close x sigma x sqrt(step)`` (sigma: the standard deviation of the last 20 log returns, as the
historical-volatility baseline; at least 1e-4), so that symbols of any price pool and a calm week and a
wild one give comparable scores. Each central band (levels ``lo`` and ``hi = 1 - lo``) is widened as
conformalized quantile regression does: with the n held-back forecasts' scores
``E_i = max(q_lo,i - y_i, y_i - q_hi,i) / d_i`` and ``Q = E_(k)``, ``k = ceil((n + 1)(hi - lo))``, the band
``[q_lo - Q d, q_hi + Q d]`` covers at least ``hi - lo`` of exchangeable outcomes (at most
``hi - lo + 1 / (n + 1)`` for continuous scores). Widening both sides alike does not chase a drift of the
fit period into the next one. A level in no band (the median) is shifted one-sidedly: the residuals
``s_i = (y_i - q_i) / d_i`` and ``q + s_(k) d`` with ``k = ceil((n + 1) q)`` give ``P(y <= q') >= q``. A
band or level whose k falls outside 1..n (too few origins for it) is left raw.

P(up): isotonic regression (pool-adjacent violators) of "close ended above the last close" on the raw
P(up), pooled over steps, when at least ``MIN_PROBABILITY_POINTS`` points exist; the identity below that.

Per symbol where a symbol has at least ``MIN_ORIGINS_PER_SYMBOL`` origins, pooled over symbols otherwise
(``scope`` says which). The result is plain JSON, stored with its SHA-256 and the origins it saw.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

MIN_ORIGINS_PER_SYMBOL = 50
SIGMA_FLOOR = 1e-4  # per-bar volatility below which a flat history's spread is taken as this
MIN_PROBABILITY_POINTS = 100
FORMAT = 1


def conformal_offset(residuals: np.ndarray, level: float) -> float | None:
    """The shift that calibrates quantile ``level`` from ``residuals`` (outcome minus raw quantile, scaled),
    with the (n+1) correction; None when n is too small to give the guarantee at this level."""
    scores = np.sort(residuals[np.isfinite(residuals)])
    n = len(scores)
    if n == 0:
        return None
    k = math.ceil((n + 1) * level) if level >= 0.5 else math.floor((n + 1) * level)
    if not 1 <= k <= n:
        return None
    return float(scores[k - 1])


def pairs(levels) -> list[tuple[float, float]]:
    """Central bands among the levels: (q, 1 - q) for every q below the median whose mirror is there too."""
    present = {round(q, 9) for q in levels}
    return [(q, 1 - q) for q in sorted(levels) if q < 0.5 and round(1 - q, 9) in present]


def unpaired(levels) -> list[float]:
    """Levels that belong to no central band (the median, an asymmetric level)."""
    paired = {round(q, 9) for band in pairs(levels) for q in band}
    return [q for q in levels if round(q, 9) not in paired]


def spread(last, sigma, step):
    """The unit of the scores: a forecast's recent spread at ``step``, ``last x max(sigma, floor) x sqrt(step)``."""
    return np.asarray(last, float) * np.maximum(np.asarray(sigma, float), SIGMA_FLOOR) * np.sqrt(step)


def _units(group: pd.DataFrame) -> np.ndarray:
    """Backtest rows' spreads (their ``hv_sd`` is ``last x sigma x sqrt(step)``)."""
    last, step = group["last"].to_numpy(float), group["step"].to_numpy(float)
    return spread(last, group["hv_sd"].to_numpy(float) / (last * np.sqrt(step)), step)


def band_offset(group: pd.DataFrame, low: float, high: float) -> float | None:
    """The widening of the band (low, high) that gives it coverage ``high - low`` (conformalized quantile
    regression): the ``ceil((n+1)(high - low))``-th smallest of ``max(q_low - y, y - q_high) / spread``;
    None when n is too small for it."""
    scores = np.maximum(group[f"q{low:g}"] - group["actual"], group["actual"] - group[f"q{high:g}"]) / _units(group)
    scores = np.sort(scores.to_numpy(float)[np.isfinite(scores.to_numpy(float))])
    k = math.ceil((len(scores) + 1) * (high - low))
    return float(scores[k - 1]) if 1 <= k <= len(scores) else None


def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """Non-decreasing least-squares fit of y on x (pool-adjacent violators) -> (knots x, fitted values).

    Points at one x share one fitted value, so the fit does not depend on the order of the rows (raw P(up)
    takes few distinct values: a share of the sample paths). Each block of one fitted value gives two knots,
    its first and its last x; fitted values rise strictly from block to block."""
    xs, which, counts = np.unique(np.asarray(x, float), return_inverse=True, return_counts=True)
    sums = np.bincount(which, weights=np.asarray(y, float), minlength=len(xs))
    blocks: list[list[float]] = []  # [sum of y, count, first x index, last x index]
    for i in range(len(xs)):
        blocks.append([sums[i], counts[i], i, i])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            total, count, _, last = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
            blocks[-1][3] = last
    knots, values = [], []
    for total, count, first, last in blocks:
        knots += [float(xs[first]), float(xs[last])]
        values += [float(total / count)] * 2
    return knots, values


@dataclass
class Calibration:
    """A fitted calibration: per scope ("*" pooled, or a symbol), per level, per step, the relative shift;
    and the P(up) map. ``describe()`` is what is stored."""

    model: str
    interval: str
    levels: list[float]
    steps: int
    shifts: dict[str, dict[str, list[float | None]]]  # scope -> level -> shift per step (None: raw)
    counts: dict[str, int]  # scope -> origins
    probability: dict[str, list[float]] | None  # {"x": knots, "y": values}; None: identity
    fitted_on: dict[str, Any] = field(default_factory=dict)  # origins, first/last origin, last target

    def describe(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "interval": self.interval,
            "method": "split-conformal per band and step (CQR) on scores / recent spread; isotonic P(up)",
            "levels": self.levels,
            "steps": self.steps,
            "shifts": self.shifts,
            "counts": self.counts,
            "probability": self.probability,
            "fitted_on": self.fitted_on,
        }

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Calibration:
        keys = ("model", "interval", "levels", "steps", "shifts", "counts", "probability", "fitted_on")
        return cls(**{k: values[k] for k in keys})

    def scope_of(self, symbol: str) -> str:
        return symbol if symbol in self.shifts else "*"

    def quantile(self, symbol: str, level: float, step: int, raw: float, unit: float) -> float:
        """A raw quantile forecast made calibrated, ``unit`` being its spread (``spread``); raw where this
        level or step has no shift."""
        shifts = self.shifts[self.scope_of(symbol)].get(f"{level:g}")
        if shifts is None or step > len(shifts) or shifts[step - 1] is None:
            return raw
        return raw + shifts[step - 1] * unit

    def prob_up(self, raw: float) -> float:
        if not self.probability:
            return raw
        return float(np.interp(raw, self.probability["x"], self.probability["y"]))


def fit(rows: pd.DataFrame, levels: list[float], model: str, interval: str) -> Calibration:
    """Fit a calibration on backtest rows (symbol, origin_ts, step, target_ts, last, actual, p_up, q<level>).

    Only the rows given are read: what the caller held back is all the fit sees.
    """
    steps = int(rows["step"].max())
    origins = rows.groupby("symbol")["origin_ts"].nunique()
    scopes = {"*": rows}
    scopes.update({s: part for s, part in rows.groupby("symbol") if origins[s] >= MIN_ORIGINS_PER_SYMBOL})
    shifts, counts = {}, {}
    for scope, part in scopes.items():
        counts[scope] = int(part[["symbol", "origin_ts"]].drop_duplicates().shape[0])
        by_step = {int(step): group for step, group in part.groupby("step")}
        shifts[scope] = {f"{level:g}": [None] * steps for level in levels}
        for step in range(1, steps + 1):
            group = by_step.get(step)
            if group is None:
                continue
            for low, high in pairs(levels):
                offset = band_offset(group, low, high)
                shifts[scope][f"{low:g}"][step - 1] = None if offset is None else -offset
                shifts[scope][f"{high:g}"][step - 1] = offset
            for level in unpaired(levels):
                residuals = ((group["actual"] - group[f"q{level:g}"]) / _units(group)).to_numpy(float)
                shifts[scope][f"{level:g}"][step - 1] = conformal_offset(residuals, level)
    probability = None
    if len(rows) >= MIN_PROBABILITY_POINTS:
        outcome = (rows["actual"] > rows["last"]).to_numpy(float)
        knots, values = isotonic(rows["p_up"].to_numpy(float), outcome)
        probability = {"x": knots, "y": values}
    fitted_on = {
        "origins": counts["*"],
        "points": int(len(rows)),
        "symbols": sorted(map(str, rows["symbol"].unique())),
        "first_origin": pd.Timestamp(rows["origin_ts"].min()).isoformat(),
        "last_origin": pd.Timestamp(rows["origin_ts"].max()).isoformat(),
        "last_target": pd.Timestamp(rows["target_ts"].max()).isoformat(),
        "per_symbol": sorted(s for s in scopes if s != "*"),
    }
    return Calibration(model, interval, list(levels), steps, shifts, counts, probability, fitted_on)


def apply(rows: pd.DataFrame, calibration: Calibration) -> pd.DataFrame:
    """Backtest-shaped rows with calibrated ``q<level>`` and ``p_up`` (raw kept as ``raw_q<level>``, ``raw_p_up``)."""
    out = rows.copy()
    units = _units(rows)
    for level in calibration.levels:
        column = f"q{level:g}"
        out[f"raw_{column}"] = rows[column]
        out[column] = [
            calibration.quantile(s, level, int(h), raw, unit)
            for s, h, raw, unit in zip(rows["symbol"], rows["step"], rows[column], units)
        ]
    # Calibrated levels of a row stay in order (sorting them keeps each band's guarantee).
    columns = [f"q{level:g}" for level in sorted(calibration.levels)]
    out[columns] = np.sort(out[columns].to_numpy(float), axis=1)
    out["raw_p_up"] = rows["p_up"]
    out["p_up"] = [calibration.prob_up(p) for p in rows["p_up"]]
    return out


def split(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """Walk-forward halves of backtest rows: (fit rows: every outcome known by the middle origin time,
    evaluation rows: the origins after it, the cut)."""
    origins = np.sort(pd.to_datetime(rows["origin_ts"], utc=True).unique())
    cut = pd.Timestamp(origins[(len(origins) - 1) // 2])
    fit_rows = rows[pd.to_datetime(rows["target_ts"], utc=True) <= cut]
    evaluation = rows[pd.to_datetime(rows["origin_ts"], utc=True) > cut]
    return fit_rows, evaluation, cut


def holdout(rows: pd.DataFrame, levels: list[float], model: str, interval: str) -> dict[str, Any]:
    """Fit on the first half of the origins (outcomes known by the cut), score on the second: raw, calibrated
    and historical-volatility bands (coverage with Wilson intervals, pinball), P(up) Brier raw and
    calibrated, CRPS of the model's sample paths, the volatility band and persistence."""
    from . import metrics
    from .backtest import band_scores

    fit_rows, evaluation, cut = split(rows)
    if fit_rows.empty or evaluation.empty:
        raise ValueError("a calibration holdout needs origins on both sides of the middle one")
    calibration = fit(fit_rows, levels, model, interval)
    calibrated = apply(evaluation, calibration)
    actual, last = evaluation["actual"].to_numpy(float), evaluation["last"].to_numpy(float)
    outcome = (actual > last).astype(float)
    return {
        "cut": cut.isoformat(),
        "fit_origins": calibration.fitted_on["origins"],
        "evaluated_origins": int(evaluation[["symbol", "origin_ts"]].drop_duplicates().shape[0]),
        "scope": "per symbol: " + ", ".join(calibration.fitted_on["per_symbol"])
        if calibration.fitted_on["per_symbol"]
        else "pooled",
        "raw": band_scores(evaluation, levels),
        "calibrated": band_scores(calibrated, levels),
        "histvol": band_scores(evaluation, levels, "hv_"),
        "brier": {
            "raw": metrics.brier(evaluation["p_up"], outcome),
            "calibrated": metrics.brier(calibrated["p_up"], outcome),
            "persistence": 0.25,
        },
        "crps": {
            "model": float(evaluation["crps"].mean()),
            "histvol": metrics.crps_normal(last, evaluation["hv_sd"], actual),
            "persistence": metrics.mae(last, actual),
        },
    }


def annotate(columns: dict[str, np.ndarray], close: np.ndarray, calibration: Calibration | None, levels) -> dict:
    """One symbol's forecast columns (``forecasting.windows.forecast_columns``) with the close rows' calibrated
    quantiles and P(up) (when there is a calibration) and the historical-volatility baseline band added as
    columns: ``calibrated_quantiles`` [rows, levels] in ascending level order, ``calibrated_prob_above_last``
    and ``baseline_quantiles`` [rows, levels] in ``levels``' order, each with a ``<name>_present`` row mask
    (the close rows; none for the calibrated ones without a calibration), and the level names of the two
    bands as ``calibrated_levels`` and ``baseline_levels``."""
    from . import metrics

    levels = list(levels)
    rows = len(columns["step"])
    on_close = columns["feature"] == "close"
    close_steps = columns["step"][on_close]  # 1..pred_len
    last = float(close[-1])
    sigma = metrics.histvol_sigma(close)
    band = metrics.histvol_band(last, sigma, int(close_steps.max()), levels)  # {level: [pred_len]}
    baseline = np.full((rows, len(levels)), np.nan)
    baseline[on_close] = np.stack([band[q][close_steps - 1] for q in levels], axis=1)
    calibrated = np.full((rows, len(levels)), np.nan)
    calibrated_up = np.full(rows, np.nan)
    if calibration is not None:
        symbol = str(columns["symbol"][0])
        raw = columns["quantiles"][on_close]  # [pred_len, levels], the forecast's own level order
        order = list(columns["levels"])
        shifted = np.array(
            [
                [
                    calibration.quantile(symbol, q, step, raw[i, order.index(f"{q:g}")], spread(last, sigma, step))
                    for q in levels
                ]
                for i, step in enumerate(close_steps.tolist())
            ]
        )
        calibrated[on_close] = np.sort(shifted, axis=1)  # non-crossing: ascending values for ascending levels
        calibrated_up[on_close] = [calibration.prob_up(p) for p in columns["prob_above_last"][on_close].tolist()]
    return {
        **columns,
        "baseline_quantiles": baseline,
        "baseline_quantiles_present": on_close,
        "calibrated_quantiles": calibrated,
        "calibrated_quantiles_present": on_close & (calibration is not None),
        "calibrated_prob_above_last": calibrated_up,
        "baseline_levels": np.array([f"{q:g}" for q in levels], dtype=object),
        "calibrated_levels": np.array([f"{q:g}" for q in sorted(levels)], dtype=object),
    }
