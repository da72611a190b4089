"""kronos-flow: run the Kronos financial foundation model in production.

``from kronos_tasks import Kronos, KronosTokenizer, KronosPredictor`` is a drop-in replacement for
upstream's ``from model import ...``. Those names load torch on first use only, so importing the
package (as Airflow does when it parses DAG files) stays cheap.
"""

from __future__ import annotations

from .lazy import lazy_attributes

__version__ = "0.1.0"

_LAZY = {
    "Kronos": ".model",
    "KronosTokenizer": ".model",
    "KronosPredictor": ".inference",
    "Forecast": ".inference",
}

__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = ["Forecast", "Kronos", "KronosPredictor", "KronosTokenizer", "__version__"]
