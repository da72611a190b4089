"""What a forecast draws and how, checked without torch: sampling parameters, quantile levels and seeds.

These rules are the only ones: the predictor applies them to its arguments and
``kronos_tasks.forecasting.ForecastParams`` to a run's parameters.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

from kronos_tasks.errors import KronosFlowError

# The version of what a seed draws: the random stream (``sampling``) and the decoding that consumes it. A
# change that makes the same seed sample other paths on purpose bumps it (and rebuilds
# tests/fixtures/golden/expected.json); every run records it, so that replay tells "another stream" from
# "a mismatch".
STREAM_VERSION = 1

MAX_SEED = 2**63 - 1
# Precisions a predictor can run in (weights, cache and activations; sampling is always float32).
DTYPE_NAMES = ("float32", "bfloat16", "float16")


class InputError(KronosFlowError, ValueError):
    """Input that cannot be forecast; the message names the series, column, row or argument and what to do."""


def check_dtype(value) -> str:
    """``value`` if it names one of ``DTYPE_NAMES``; InputError naming the choices otherwise."""
    if value not in DTYPE_NAMES:
        raise InputError(f"dtype must be one of {DTYPE_NAMES}, got {value!r}.")
    return value


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int if it is an integer (not a bool) in [low, high]; InputError naming ``name`` otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InputError(f"{name} must be an integer {bound}, got {value!r}.")
    return int(value)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_quantiles(quantiles: Iterable | None) -> tuple[float, ...]:
    """Distinct quantile levels strictly between 0 and 1, as floats in the order given (None: none)."""
    if quantiles is None:
        return ()
    if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, Iterable):
        raise InputError(f"quantiles must be a list of numbers such as [0.1, 0.5, 0.9], got {quantiles!r}.")
    levels = tuple(quantiles)
    for q in levels:
        if not _is_number(q) or not 0 < q < 1:
            raise InputError(f"quantiles must lie strictly between 0 and 1, got {q!r}.")
    if len(set(levels)) != len(levels):
        raise InputError(f"quantiles must be distinct, got {list(levels)}.")
    return tuple(float(q) for q in levels)


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn: ``T`` divides the logits, then top-k, then top-p filtering apply.

    ``top_k=0`` and ``top_p=1.0`` switch a filter off. Unlike upstream Kronos, which applies only top-k when
    both are set, both filters apply in that order: top-p works on the top-k distribution, renormalised.
    """

    T: float = 1.0
    top_k: int = 0
    top_p: float = 0.9

    def __post_init__(self) -> None:
        if not _is_number(self.T) or not math.isfinite(self.T) or self.T <= 0:
            raise InputError(f"T (temperature) must be a finite number > 0, got {self.T!r}.")
        check_int("top_k", self.top_k, 0)
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}.")


def derive_seed(base: int, key: int | str) -> int:
    """A 63-bit seed for ``key`` (a series index or a symbol) from a base seed; stable across platforms."""
    digest = hashlib.blake2b(f"{base}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
