"""Training windows from the bars table: normalised as inference normalises, split by time.

Each window is ``lookback + pred_len + 1`` consecutive bars of one symbol (the predictor reads bars
[:-1] and is scored on bars [1:]). Its six features are z-scored with the mean and standard deviation of
its first ``lookback`` bars and clipped, as inference scales a context and the forecast that follows it;
its time features are the bars' wall-clock times in the instrument's timezone, as inference computes them.
Per symbol, the last ``val_share`` of its bars (by time) is the validation tail: no training window
touches it, validation windows lie entirely inside it, and the backtest of a trained pair uses it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sqlalchemy import Engine

from kronos_tasks.data.schema import DataError
from kronos_tasks.data.watchlist import WatchItem
from kronos_tasks.inference.features import FEATURE_COLUMNS, NORM_EPS, normalise, time_features
from kronos_tasks.storage import read_bars


@dataclass(frozen=True)
class SeriesSplit:
    """One symbol's bars (features [N, 6] float64, time features [N, 5]) and where its validation tail starts."""

    item: WatchItem
    values: np.ndarray
    stamps: np.ndarray
    first_ts: pd.Timestamp
    split_ts: pd.Timestamp  # first bar of the validation tail
    last_ts: pd.Timestamp
    split: int  # index of that bar


class WindowSet:
    """Windows of ``length`` bars starting at ``starts`` [(series index, start)], normalised on access."""

    def __init__(
        self, series: list[SeriesSplit], starts: list[tuple[int, int]], lookback: int, length: int, clip: float
    ):
        self.series, self.starts, self.lookback, self.length, self.clip = series, starts, lookback, length, clip

    def __len__(self) -> int:
        return len(self.starts)

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(normalised features [length, 6] float32, time features [length, 5] float32) of window ``index``."""
        which, start = self.starts[index]
        series = self.series[which]
        raw = series.values[start : start + self.length]
        _, mean, std = normalise(raw[: self.lookback], self.clip)
        values = raw.astype(mean.dtype)  # float32 as inference computes, float64 where float32 overflowed
        with np.errstate(over="ignore", invalid="ignore"):
            x = np.clip((values - mean) / (std + NORM_EPS), -self.clip, self.clip).astype(np.float32)
        return x, series.stamps[start : start + self.length]

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows ``indices`` -> (x [B, length, 6], stamps [B, length, 5]) float32 tensors."""
        pairs = [self.window(int(i)) for i in indices]
        return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """Index batches over every window once: [B] window indices, in a random order drawn from
        ``generator``, or in order without one. Every training process draws the same batches."""
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        return [order[start : start + batch_size] for start in range(0, len(self), batch_size)]


@dataclass
class TrainingData:
    """Training and validation windows of a set of symbols, and what identifies the data they came from."""

    train: WindowSet
    val: WindowSet
    series: list[SeriesSplit]

    def describe(self) -> dict:
        """The data window for lineage: symbols with their spans and split times, and a hash of the bars."""
        digest = hashlib.sha256()
        for s in self.series:
            digest.update(s.item.symbol.encode() + s.item.interval.encode())
            digest.update(np.ascontiguousarray(s.values).tobytes())
        return {
            "symbols": [
                {
                    "symbol": s.item.symbol,
                    "interval": s.item.interval,
                    "bars": len(s.values),
                    "first": s.first_ts.isoformat(),
                    "validation_from": s.split_ts.isoformat(),
                    "last": s.last_ts.isoformat(),
                }
                for s in self.series
            ],
            "train_windows": len(self.train),
            "val_windows": len(self.val),
            "data_sha256": digest.hexdigest(),
        }


def load_training_data(
    engine: Engine,
    items: list[WatchItem],
    lookback: int,
    pred_len: int,
    val_share: float = 0.2,
    stride: int = 1,
    clip: float = 5.0,
) -> TrainingData:
    """Windows of ``lookback + pred_len + 1`` bars from the stored bars of ``items``, split by time.

    A symbol with too few bars for a training and a validation window is refused with a DataError that
    names it and how many bars it needs.
    """
    if not 0 < val_share < 1:
        raise DataError(f"val_share must be between 0 and 1, got {val_share}.")
    length = lookback + pred_len + 1
    series, train, val = [], [], []
    for item in items:
        bars = read_bars(engine, item.symbol, item.interval)
        needed = int(np.ceil(length / val_share))
        if len(bars) < max(needed, 2 * length):
            raise DataError(
                f"{item.symbol} at {item.interval}: {len(bars)} stored bars; training with lookback {lookback} and "
                f"pred_len {pred_len} needs at least {max(needed, 2 * length)} (a validation tail of "
                f"{val_share:.0%} holding a whole window). Ingest more history or shorten the windows."
            )
        local = pd.DatetimeIndex(bars["ts"]).tz_convert(item.timezone or "UTC").tz_localize(None)
        split = len(bars) - int(round(len(bars) * val_share))
        index = len(series)
        series.append(
            SeriesSplit(
                item,
                bars[FEATURE_COLUMNS].to_numpy(dtype=np.float64),
                time_features(pd.Series(local)),
                bars["ts"].iloc[0],
                bars["ts"].iloc[split],
                bars["ts"].iloc[-1],
                split,
            )
        )
        train += [(index, start) for start in range(0, split - length + 1, stride)]
        val += [(index, start) for start in range(split, len(bars) - length + 1, stride)]
    return TrainingData(
        WindowSet(series, train, lookback, length, clip), WindowSet(series, val, lookback, length, clip), series
    )
