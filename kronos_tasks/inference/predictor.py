"""KronosPredictor: forecasts from pandas frames, argument-compatible with upstream Kronos's predictor.

Beyond upstream: series of any mix of lengths in one call (batched in chunks), cached decoding,
explicit seeds with one random stream per series, and, on request, quantiles and the sample paths
next to the mean. See docs/upstream-differences.md for every behavioural difference.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from kronos_tasks.model import Kronos, KronosTokenizer, check_pair

from .features import FEATURE_COLUMNS, as_timestamps, complete_features, denormalise, normalise, time_features
from .generate import DECODING_METHODS, decode_tokens, generate_tokens, tokenize
from .params import MAX_SEED, InputError, SamplingParams, check_dtype, check_int, check_quantiles, derive_seed

log = logging.getLogger(__name__)


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda:0"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass
class Forecast:
    """One series' forecast: the mean path, quantiles and (on request) every sample path.

    ``seed`` is the series' own seed: ``predict(..., seed=forecast.seed)`` reproduces it on the same device.
    """

    mean: pd.DataFrame
    quantiles: dict[float, pd.DataFrame] = field(default_factory=dict)
    samples: np.ndarray | None = None  # [sample_count, pred_len, 6], columns as FEATURE_COLUMNS
    seed: int = 0

    def quantile(self, q: float) -> pd.DataFrame:
        try:
            return self.quantiles[q]
        except KeyError:
            raise KeyError(f"quantile {q} was not requested; available: {sorted(self.quantiles)}") from None


def _series_seeds(seed, count: int) -> list[int]:
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())  # follows torch.manual_seed, as upstream's sampling does
    if isinstance(seed, (list, tuple, np.ndarray)):
        if len(seed) != count:
            raise InputError(f"seed: got {len(seed)} seeds for {count} series; give one per series or one int.")
        return [check_int(f"seed[{i}]", s, 0, MAX_SEED) for i, s in enumerate(seed)]
    base = check_int("seed", seed, 0, MAX_SEED)
    return [base] if count == 1 else [derive_seed(base, i) for i in range(count)]


def _as_upstream(forecasts: list[Forecast], levels: tuple[float, ...], return_samples: bool) -> list:
    """What upstream's methods return (the mean frames) unless quantiles or samples were asked for."""
    if not levels and not return_samples:
        return [f.mean for f in forecasts]
    if not return_samples:
        for f in forecasts:
            f.samples = None
    return forecasts


@dataclass
class _Series:
    values: np.ndarray  # [L, 6] normalised, clipped
    mean: np.ndarray
    std: np.ndarray
    stamps: np.ndarray  # [L, 5]
    future_stamps: np.ndarray  # [pred_len, 5]
    y_timestamp: object


def _chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


class KronosPredictor:
    """Forecasts OHLCVA bars with a Kronos model and its tokenizer.

    ``batch_size`` bounds how many series decode together (memory grows with batch_size x sample_count x
    window); ``method`` is ``"cached"`` (default) or ``"full"``, the slow full-recompute reference path.
    ``dtype`` (``"float32"``, ``"bfloat16"`` or ``"float16"``; default: the weights' own) casts model and
    tokenizer; half precision halves memory and speeds up a GPU, and forecasts move by its rounding
    (bench/RESULTS.md has the parity report). Sampling always runs in float32.
    """

    def __init__(
        self,
        model: Kronos,
        tokenizer: KronosTokenizer,
        device: str | None = None,
        max_context: int = 512,
        clip: float = 5,
        *,
        batch_size: int = 32,
        method: str = "cached",
        dtype: str | None = None,
    ):
        check_pair(tokenizer.config, model.config)
        self.max_context = check_int("max_context", max_context, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        if method not in DECODING_METHODS:
            raise InputError(f"method must be one of {DECODING_METHODS}, got {method!r}.")
        if not clip > 0:
            raise InputError(f"clip must be > 0, got {clip!r}.")
        self.method = method
        self.clip = clip
        self.device = torch.device(device or default_device())
        cast = {} if dtype is None else {"dtype": getattr(torch, check_dtype(dtype))}
        self.model = model.to(self.device, **cast).eval()
        self.tokenizer = tokenizer.to(self.device, **cast).eval()

    def predict(
        self,
        df: pd.DataFrame,
        x_timestamp,
        y_timestamp,
        pred_len: int,
        T: float = SamplingParams.T,
        top_k: int = SamplingParams.top_k,
        top_p: float = SamplingParams.top_p,
        sample_count: int = 1,
        verbose: bool = True,
        *,
        seed: int | None = None,
        quantiles: Sequence[float] | None = None,
        return_samples: bool = False,
    ):
        """Forecast ``pred_len`` bars after ``df`` at the times ``y_timestamp``.

        Returns the mean over ``sample_count`` sample paths as a DataFrame (open, high, low, close, volume,
        amount) indexed by ``y_timestamp``, as upstream does. With ``quantiles`` or ``return_samples`` it
        returns a ``Forecast`` with the mean, those quantiles and the sample paths. The same ``seed`` and
        inputs give the same forecast on the same device; ``seed=None`` draws one from torch's generator.
        """
        if seed is not None and isinstance(seed, (list, tuple, np.ndarray)):
            raise InputError("predict takes one int seed; predict_batch takes one per series.")
        levels = check_quantiles(quantiles)
        sampling = SamplingParams(T=T, top_k=top_k, top_p=top_p)
        forecasts = self.forecast(
            [df], [x_timestamp], [y_timestamp], pred_len, sampling, sample_count, _series_seeds(seed, 1), levels,
            ["df"], verbose=verbose,
        )  # fmt: skip
        return _as_upstream(forecasts, levels, return_samples)[0]

    def predict_batch(
        self,
        df_list,
        x_timestamp_list,
        y_timestamp_list,
        pred_len: int,
        T: float = SamplingParams.T,
        top_k: int = SamplingParams.top_k,
        top_p: float = SamplingParams.top_p,
        sample_count: int = 1,
        verbose: bool = True,
        *,
        seed: int | Sequence[int] | None = None,
        quantiles: Sequence[float] | None = None,
        return_samples: bool = False,
    ):
        """Forecast several series at once; they may have different history lengths.

        Each result equals what ``predict`` gives for that series alone with the series' seed: an int
        ``seed`` gives series i the seed ``derive_seed(seed, i)``, a list gives each series its own.
        Returns one DataFrame (or ``Forecast``, as in ``predict``) per series, in input order.
        """
        if not isinstance(df_list, (list, tuple)):
            raise InputError("df_list, x_timestamp_list and y_timestamp_list must be lists or tuples.")
        levels = check_quantiles(quantiles)
        sampling = SamplingParams(T=T, top_k=top_k, top_p=top_p)
        labels = [f"df_list[{i}]" for i in range(len(df_list))]
        forecasts = self.forecast(
            df_list, x_timestamp_list, y_timestamp_list, pred_len, sampling, sample_count,
            _series_seeds(seed, len(df_list)), levels, labels, verbose=verbose,
        )  # fmt: skip
        return _as_upstream(forecasts, levels, return_samples)

    def forecast(
        self,
        df_list: Sequence[pd.DataFrame],
        x_timestamp_list: Sequence,
        y_timestamp_list: Sequence,
        pred_len: int,
        sampling: SamplingParams,
        sample_count: int,
        seeds: Sequence[int],
        quantiles: Sequence[float],
        labels: Sequence[str],
        verbose: bool = True,
    ) -> list[Forecast]:
        """One ``Forecast`` per series (mean, ``quantiles`` and every sample path), series i drawn with ``seeds[i]``.

        The typed entry point behind ``predict`` and ``predict_batch``; ``labels`` name the series in errors.
        """
        if (
            not isinstance(df_list, (list, tuple))
            or not isinstance(x_timestamp_list, (list, tuple))
            or not isinstance(y_timestamp_list, (list, tuple))
        ):
            raise InputError("df_list, x_timestamp_list and y_timestamp_list must be lists or tuples.")
        if not (len(df_list) == len(x_timestamp_list) == len(y_timestamp_list)) or not df_list:
            raise InputError(
                f"df_list, x_timestamp_list and y_timestamp_list must be non-empty and of one length, got "
                f"{len(df_list)}, {len(x_timestamp_list)} and {len(y_timestamp_list)}."
            )
        if len(seeds) != len(df_list) or len(labels) != len(df_list):
            raise InputError(f"give one seed and one label per series: {len(df_list)} series.")
        pred_len = check_int("pred_len", pred_len, 1, self.max_context)
        sample_count = check_int("sample_count", sample_count, 1)
        seeds = [check_int(f"seed of {label}", s, 0, MAX_SEED) for s, label in zip(seeds, labels)]
        levels = check_quantiles(quantiles)
        series = [
            self._prepare(df, x_ts, y_ts, pred_len, label)
            for df, x_ts, y_ts, label in zip(df_list, x_timestamp_list, y_timestamp_list, labels)
        ]

        paths = self._sample_paths(series, seeds, sample_count, sampling, verbose)  # per series [S, pred_len, 6]
        results = []
        for s, normalised, series_seed in zip(series, paths, seeds):
            samples = denormalise(normalised, s.mean, s.std)
            mean = denormalise(np.mean(normalised, axis=0), s.mean, s.std)
            qs = np.quantile(samples, levels, axis=0) if levels else []
            results.append(
                Forecast(
                    mean=pd.DataFrame(mean, columns=FEATURE_COLUMNS, index=s.y_timestamp),
                    quantiles={
                        q: pd.DataFrame(values, columns=FEATURE_COLUMNS, index=s.y_timestamp)
                        for q, values in zip(levels, qs)
                    },
                    samples=samples,
                    seed=series_seed,
                )
            )
        return results

    def _prepare(self, df, x_timestamp, y_timestamp, pred_len: int, label: str) -> _Series:
        features = complete_features(df, label)
        if len(features) == 0:
            raise InputError(f"{label}: the history is empty; give at least one bar.")
        x_stamps = as_timestamps(x_timestamp, f"{label}: x_timestamp", expected_len=len(features))
        y_stamps = as_timestamps(y_timestamp, f"{label}: y_timestamp")
        if len(y_stamps) != pred_len:
            raise InputError(f"{label}: y_timestamp has {len(y_stamps)} timestamps but pred_len is {pred_len}.")
        values, mean, std = normalise(features.to_numpy(), self.clip)
        return _Series(values, mean, std, time_features(x_stamps), time_features(y_stamps), y_timestamp)

    def _sample_paths(
        self, series: list[_Series], seeds: list[int], samples: int, params: SamplingParams, verbose: bool
    ) -> list[np.ndarray]:
        """Normalised sample paths per series, [S, pred_len, 6], decoding chunks of similar lengths together.

        A chunk that runs out of memory is split in two and retried, and later chunks take the smaller size
        (kept in ``batch_size``): a series' paths do not depend on the series decoded beside it, so the
        result is the same.
        """
        order = sorted(range(len(series)), key=lambda i: -len(series[i].values))
        out: list[np.ndarray | None] = [None] * len(series)
        pending = _chunks(order, self.batch_size)
        decoded = 0
        while pending:
            chunk = pending.pop(0)
            started = time.perf_counter()
            try:
                bars = self._decode_chunk([series[i] for i in chunk], [seeds[i] for i in chunk], samples, params)
            except torch.OutOfMemoryError:
                if len(chunk) == 1:
                    raise
                self.batch_size = len(chunk) // 2
                log.warning(
                    "out of memory decoding %d series x %d samples on %s; retrying in chunks of %d series",
                    len(chunk), samples, self.device, self.batch_size,
                )  # fmt: skip
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                pending = _chunks(chunk + [i for rest in pending for i in rest], self.batch_size)
                continue
            for position, i in enumerate(chunk):
                out[i] = bars[position]
            decoded += 1
            if verbose:
                seconds = time.perf_counter() - started
                pred_len = bars.shape[2]
                log.info(
                    "chunk %d/%d: %d series x %d samples x %d bars in %.2f s (%.0f bars/s, %s)",
                    decoded,
                    decoded + len(pending),
                    len(chunk),
                    samples,
                    pred_len,
                    seconds,
                    len(chunk) * samples * pred_len / max(seconds, 1e-9),
                    self.method,
                )
        return out

    def _decode_chunk(
        self, series: list[_Series], seeds: list[int], samples: int, params: SamplingParams
    ) -> np.ndarray:
        """Sample paths of the series decoded together: [series, S, pred_len, 6] (float32, float64 kept)."""
        dtype, device = self.model.dtype, self.device
        batch = tokenize(
            self.tokenizer,
            *(
                [torch.from_numpy(getattr(s, name)).to(device, dtype) for s in series]
                for name in ("values", "stamps", "future_stamps")
            ),
            self.max_context,
        )
        chunk_seeds = torch.tensor(seeds, dtype=torch.int64, device=device)
        s1, s2 = generate_tokens(self.model, batch, samples, params, chunk_seeds, self.method)
        bars = decode_tokens(self.tokenizer, batch, s1, s2, samples, self.method)
        keep = torch.float64 if bars.dtype == torch.float64 else torch.float32
        return bars.to(keep).cpu().numpy().reshape(len(series), samples, batch.pred_len, -1)
