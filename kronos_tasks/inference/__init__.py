"""Sampling, the two-stage autoregressive loop and the pandas-facing predictor.

``inference.params`` (sampling parameters, quantiles, seeds) imports no torch; the names below load
their modules, and torch, on first use.
"""

from __future__ import annotations

from kronos_tasks.lazy import lazy_attributes

_LAZY = {
    "Forecast": ".predictor",
    "KronosPredictor": ".predictor",
    "default_device": ".predictor",
    "InputError": ".params",
    "SamplingParams": ".params",
    "derive_seed": ".params",
}

__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = sorted(_LAZY)
