"""kronos-flow: run the Kronos financial foundation model in production.

``from kronos_tasks import Kronos, KronosTokenizer, KronosPredictor`` is a drop-in replacement for
upstream's ``from model import ...``. Those names load torch on first use only, so importing the
package (as Airflow does when it parses DAG files) stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Kronos": "kronos_tasks.model",
    "KronosTokenizer": "kronos_tasks.model",
    "KronosPredictor": "kronos_tasks.inference",
    "Forecast": "kronos_tasks.inference",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kronos_tasks' has no attribute {name!r}")


__all__ = ["Forecast", "Kronos", "KronosPredictor", "KronosTokenizer", "__version__"]
