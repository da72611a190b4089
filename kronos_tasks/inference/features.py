"""Model inputs from pandas: the six bar features, their per-series normalisation, and time features."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .params import InputError

PRICE_COLUMNS = ["open", "high", "low", "close"]
FEATURE_COLUMNS = PRICE_COLUMNS + ["volume", "amount"]
TIME_FEATURES = ["minute", "hour", "weekday", "day", "month"]
# Added to the standard deviation before dividing, as upstream does, so flat series stay finite.
NORM_EPS = 1e-5


def complete_features(df: pd.DataFrame, label: str) -> pd.DataFrame:
    """The six feature columns, with volume and amount filled as upstream fills them when absent.

    No volume: volume and amount are 0. Volume without amount: amount = volume x mean(open, high, low, close).
    """
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"{label}: expected a pandas DataFrame, got {type(df).__name__}.")
    missing = [c for c in PRICE_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(
            f"{label}: missing price column(s) {missing}; the frame needs {PRICE_COLUMNS} "
            f"(volume and amount are optional), it has {list(df.columns)}."
        )
    out = df.copy()
    if "volume" not in out.columns:
        out["volume"] = 0.0
        out["amount"] = 0.0
    if "amount" not in out.columns:
        out["amount"] = out["volume"] * out[PRICE_COLUMNS].mean(axis=1)
    features = out[FEATURE_COLUMNS]
    for column in FEATURE_COLUMNS:
        values = pd.to_numeric(features[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{label}: column {column!r} has {int(bad.sum())} missing, non-numeric or infinite value(s), "
                f"first at row {row} (index {features.index[row]!r}); drop or repair those bars."
            )
    return features.astype(np.float64)


def as_timestamps(values, label: str, expected_len: int | None = None) -> pd.Series:
    """Timestamps as a Series, checked to be present and strictly increasing (and of ``expected_len``)."""
    try:
        stamps = pd.Series(pd.to_datetime(pd.Series(values).reset_index(drop=True)))
    except (ValueError, TypeError) as exc:
        raise InputError(f"{label}: cannot read the values as timestamps: {exc}.") from exc
    if expected_len is not None and len(stamps) != expected_len:
        raise InputError(f"{label}: has {len(stamps)} timestamps, expected {expected_len}.")
    missing = stamps.isna().to_numpy()
    if missing.any():
        raise InputError(f"{label}: timestamp missing at row {int(np.flatnonzero(missing)[0])}.")
    step = stamps.diff().iloc[1:].to_numpy()
    bad = np.flatnonzero(step <= pd.Timedelta(0))
    if len(bad):
        row = int(bad[0]) + 1
        kind = "duplicates" if stamps.iloc[row] == stamps.iloc[row - 1] else "goes back from"
        raise InputError(
            f"{label}: timestamps must increase strictly; row {row} ({stamps.iloc[row]}) {kind} row {row - 1} "
            f"({stamps.iloc[row - 1]}). Sort the bars and drop duplicates."
        )
    return stamps


def time_features(stamps: pd.Series) -> np.ndarray:
    """[L, 5] float32: minute, hour, weekday (Monday = 0), day of month, month, in the stamps' own zone."""
    dt = stamps.dt
    return np.stack([dt.minute, dt.hour, dt.weekday, dt.day, dt.month], axis=1).astype(np.float32)


def normalise(values: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature z-scores clipped to [-clip, clip]: (normalised float32, mean, std).

    Computed in float32 as upstream does; where float32 overflows (prices near 1e38, or volumes whose
    squares pass 3e38), the statistics and z-scores are computed in float64 instead, and mean and std
    stay float64 so that denormalised forecasts are finite too.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        x = values.astype(np.float32)
        mean, std = np.mean(x, axis=0), np.std(x, axis=0)
        normalised = np.clip((x - mean) / (std + NORM_EPS), -clip, clip)
    if np.isfinite(mean).all() and np.isfinite(std).all() and np.isfinite(normalised).all():
        return normalised, mean, std
    wide = values.astype(np.float64)
    mean, std = np.mean(wide, axis=0), np.std(wide, axis=0)
    return np.clip((wide - mean) / (std + NORM_EPS), -clip, clip).astype(np.float32), mean, std


def denormalise(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return values * (std + NORM_EPS) + mean
