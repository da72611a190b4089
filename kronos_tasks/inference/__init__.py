"""Sampling, the two-stage autoregressive loop and the pandas-facing predictor."""

from .features import InputError
from .predictor import Forecast, KronosPredictor, derive_seed
from .sampling import SamplingParams

__all__ = ["Forecast", "InputError", "KronosPredictor", "SamplingParams", "derive_seed"]
