"""Per-process resources the task functions share: settings, the forecasts database engine, the registry."""

from __future__ import annotations

import gc
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING

from kronos_tasks.errors import ParamsError
from kronos_tasks.settings import Settings, load

if TYPE_CHECKING:  # sqlalchemy and pandas load with the database, not with this module (see relax_gc)
    from sqlalchemy import Engine

GC_YOUNG_THRESHOLD = 50_000  # allocations between collections of the youngest generation (Python's default: 700)


def relax_gc() -> None:
    """Collect cyclic garbage less often in this process: the youngest generation every ``GC_YOUNG_THRESHOLD``
    allocations (never lowered where it is already higher). A task process holds about a million long-lived
    objects once Airflow, torch, pandas and MLflow are imported, and at Python's default thresholds each import
    and each batch of rows set off another full collection that rescans them all: 14 full collections, 3.7-3.9 s
    of a 1,000-symbol daily run on 2 cores (bench/RESULTS.md). Memory is still freed by reference counting at
    once; only reference cycles wait longer. The task functions that load a model or handle many rows call it
    first, and so does ``run_dag`` for every task it runs in its process."""
    young, middle, old = gc.get_threshold()
    if young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """A pooled engine for ``url``, checked once to be migrated to the code's schema."""
    from kronos_tasks.storage import make_engine, require_schema

    engine = make_engine(url)
    require_schema(engine)
    return engine


def settings() -> Settings:
    """Settings read now (tasks may run in processes whose environment was set after import)."""
    return load()


def engine() -> Engine:
    return engine_for(settings().db_url)


def registry():
    from kronos_tasks.registry.registry import Registry

    return Registry(settings())


def utc(moment: datetime | str) -> datetime:
    """A plain ``datetime`` in UTC from an aware datetime (pendulum's too) or ISO text; naive input is refused."""
    moment = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ParamsError(f"{moment!r} has no timezone; give the time with its offset.")
    return datetime.fromtimestamp(moment.timestamp(), timezone.utc)


# glibc's malloc raises its thresholds as a process frees large blocks, up to these ceilings (its own
# DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, and twice that for trimming). Until it gets there, the decoding
# loop's tensors of a few megabytes come from fresh pages and go back to the kernel when freed: 3.2-3.8
# million page faults and 7-9 s of system time in the first 1,000 forecasts of a process, against 97,000
# faults and 1 s with the ceilings set from the start (bench/RESULTS.md).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 64 * 2**20


def reuse_freed_memory() -> bool:
    """Let this process's allocator keep and reuse freed blocks of up to ``MMAP_THRESHOLD_BYTES`` (and free
    heap of up to ``TRIM_THRESHOLD_BYTES``) instead of returning them to the kernel at once: the limits glibc
    itself converges to, set before the first forecast. -> whether they were set (False where the C library
    is not glibc: nothing changes there)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def cores_owned() -> int:
    """CPU cores this process may run on, shared among the worker's concurrent task slots: the cores in the
    process's affinity divided by the Celery worker concurrency (AIRFLOW__CELERY__WORKER_CONCURRENCY, 1 when
    unset)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        slots = max(1, int(os.environ.get("AIRFLOW__CELERY__WORKER_CONCURRENCY", "1")))
    except ValueError:
        slots = 1
    return max(1, cores // slots)


def own_threads() -> int:
    """Set torch's intra- and inter-op threads for this task from KRONOS_TORCH_THREADS (``auto``: the cores it
    owns, see ``cores_owned``) -> the intra-op thread count. torch's default (every core of the machine per
    process) oversubscribes shared cores and makes a batch's time vary by orders of magnitude."""
    import torch

    wanted = settings().torch_threads or cores_owned()
    torch.set_num_threads(wanted)
    try:
        torch.set_num_interop_threads(1 if wanted == 1 else 2)
    except RuntimeError:
        pass  # already set in this process (inter-op threads can be set once, before any parallel work)
    return wanted


def prepare_decoding() -> int:
    """Ready this process for a task's decoding: torch's threads from the cores it owns (``own_threads``) and
    freed blocks kept for reuse (``reuse_freed_memory``) -> the intra-op thread count."""
    threads = own_threads()
    reuse_freed_memory()
    return threads
