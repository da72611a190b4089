"""The base of every error kronos-flow expects, and the errors shared by several packages.

An expected error is one a user can act on: bad input, a bad setting, a missing model or database.
Its message names what is wrong and what to do. Anything else is a bug and is never caught as if it
were bad input: the command prints a traceback, the Airflow task fails and retries.
"""

from __future__ import annotations


class KronosFlowError(Exception):
    """An expected error; the message names what is wrong and what to do about it."""


class ParamsError(KronosFlowError, ValueError):
    """A run parameter or watchlist entry that cannot be used; the message names it."""
