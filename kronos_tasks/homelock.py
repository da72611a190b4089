"""One lock per KRONOS_HOME, so that two `kronos-flow init` or `demo` commands never migrate or register at once."""

from __future__ import annotations

import fcntl
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kronos_tasks.errors import KronosFlowError

LOCK_FILE = ".kronos-flow.lock"
WAIT_SECONDS = 900.0  # longer than a demo takes on a small CPU machine


@contextmanager
def home_lock(home: Path, what: str, wait_seconds: float = WAIT_SECONDS) -> Iterator[None]:
    """Hold the lock of ``home`` while the block runs; wait (saying so once) while another command holds it.

    The lock is the operating system's (``flock``): it is released when its holder exits, however it exits.
    """
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_FILE, "a+") as handle:
        deadline, said = time.monotonic() + wait_seconds, False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise KronosFlowError(
                        f"another kronos-flow command has held {home / LOCK_FILE} for over {wait_seconds:.0f} s; "
                        f"wait for it to finish, then run {what} again."
                    ) from None
                if not said:
                    print(f"waiting for another kronos-flow command using {home} ...", file=sys.stderr, flush=True)
                    said = True
                time.sleep(0.5)
        yield
