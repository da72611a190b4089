"""Content hashes used for audit: weights files and the data windows forecasts read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def frame_sha256(frame: pd.DataFrame, columns: list[str]) -> str:
    """SHA-256 of a frame's values in ``columns`` (timestamps as UTC nanoseconds, numbers as float64)."""
    digest = hashlib.sha256()
    for column in columns:
        values = frame[column]
        if isinstance(values.dtype, pd.DatetimeTZDtype):  # its integers are UTC whatever the zone
            data = values.array.as_unit("ns").asi8
        elif pd.api.types.is_datetime64_any_dtype(values):
            data = pd.DatetimeIndex(values).tz_convert("UTC").as_unit("ns").asi8
        else:
            data = np.ascontiguousarray(values.to_numpy(dtype=np.float64))
        digest.update(column.encode())
        digest.update(data.tobytes())
    return digest.hexdigest()


def window_sha256(times: pd.DatetimeIndex, values: np.ndarray) -> str:
    """``frame_sha256`` of a frame of ``ts`` (``times``, aware) and the model's six features (the rows of
    ``values``, in ``FEATURES`` order), computed on the arrays: the same digest without building the frame."""
    from kronos_tasks.data import FEATURES

    digest = hashlib.sha256()
    digest.update(b"ts")
    digest.update(times.as_unit("ns").asi8.tobytes())
    for column, row in zip(FEATURES, values, strict=True):
        digest.update(column.encode())
        digest.update(np.ascontiguousarray(row, dtype=np.float64).tobytes())
    return digest.hexdigest()


def combine(hashes: dict[str, str]) -> str:
    """One SHA-256 for named hashes, independent of their order."""
    digest = hashlib.sha256()
    for name in sorted(hashes):
        digest.update(f"{name}={hashes[name]}\n".encode())
    return digest.hexdigest()
