"""The parameters of a forecast run: their defaults, their help and every rule they must follow, in one place.

The DAGs build their trigger-form ``Param``s from ``ForecastParams.param_specs`` and the ``kronos-flow``
commands their options from the same fields, so a default or a rule is written once. This module
imports neither torch nor pandas: Airflow loads it when it parses the DAG files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from kronos_tasks.errors import ParamsError
from kronos_tasks.inference.params import (
    DTYPE_NAMES,
    MAX_SEED,
    InputError,
    SamplingParams,
    check_dtype,
    check_int,
    check_quantiles,
    derive_seed,
)


def _param(default: Any, help: str, schema: dict[str, Any]) -> Any:
    """A field with its help text and the JSON schema of its Airflow ``Param``."""
    return field(default=default, metadata={"help": help, "schema": schema})


_LEVEL = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}


@dataclass(frozen=True)
class ForecastParams:
    """What a forecast run does. Empty (None) values are filled when the run is planned (``resolve``)."""

    pred_len: int = _param(24, "bars to forecast per symbol", {"type": "integer", "minimum": 1})
    lookback: int | None = _param(
        None,
        "history bars the model reads (empty: max_context - pred_len, so the window never slides)",
        {"type": ["null", "integer"], "minimum": 1},
    )
    T: float = _param(SamplingParams.T, "sampling temperature", {"type": "number", "exclusiveMinimum": 0})
    top_k: int = _param(
        SamplingParams.top_k, "keep the k most likely tokens (0: off)", {"type": "integer", "minimum": 0}
    )
    top_p: float = _param(
        SamplingParams.top_p,
        "keep the most likely tokens up to this probability mass (1: off; below 1 narrows the bands)",
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    )
    sample_count: int = _param(
        16, "sample paths per symbol; the forecast is their mean", {"type": "integer", "minimum": 1}
    )
    quantiles: tuple[float, ...] = _param(
        (0.1, 0.5, 0.9), "quantile levels of the sample paths stored with the mean", {"type": "array", "items": _LEVEL}
    )
    seed: int | None = _param(
        None,
        "random seed (empty: derived from the run, so that a re-run reuses it)",
        {"type": ["null", "integer"], "minimum": 0},
    )
    model: str | None = _param(
        None, "registered model alias or version (empty: KRONOS_MODEL_ALIAS)", {"type": ["null", "string"]}
    )
    batch_size: int | None = _param(
        None,
        "series decoded together; memory grows with it (empty: KRONOS_BATCH_SIZE)",
        {"type": ["null", "integer"], "minimum": 1},
    )
    min_history: int = _param(32, "fewest history bars a symbol needs", {"type": "integer", "minimum": 1})
    dtype: str = _param(
        "float32",
        "precision of the model on the device; bfloat16 or float16 halve its memory and speed up large GPU "
        "batches, and move forecasts by their rounding (bench/RESULTS.md)",
        {"type": "string", "enum": list(DTYPE_NAMES)},
    )

    @classmethod
    def from_dict(cls, values: dict[str, Any], max_context: int | None = None) -> ForecastParams:
        """Parameters from a mapping (DAG params, CLI options, JSON); missing or None values take the defaults.

        Checked by ``check(max_context)``; a ParamsError names the parameter and the rule it breaks.
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ParamsError(f"unknown parameter(s) {unknown}; known: {sorted(known)}.")
        given = {k: v for k, v in values.items() if v is not None}
        if "quantiles" in given:
            try:
                given["quantiles"] = check_quantiles(given["quantiles"])
            except InputError as exc:
                raise ParamsError(str(exc)) from None
        params = cls(**given)
        params.check(max_context)
        return params

    @classmethod
    def param_specs(cls, defaults: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Per parameter: the keyword arguments of an Airflow ``Param`` (default, JSON schema, description).

        ``defaults`` replaces the default shown for some parameters (the values the empty ones resolve to
        on this deployment appear in their descriptions instead).
        """
        specs = {}
        for f in fields(cls):
            specs[f.name] = {
                "default": list(f.default) if isinstance(f.default, tuple) else f.default,
                "description": f.metadata["help"],
                **f.metadata["schema"],
            }
            if defaults and f.name in defaults:
                specs[f.name]["description"] += f"; here: {defaults[f.name]}"
        return specs

    def check(self, max_context: int | None = None) -> None:
        """Raise ParamsError unless every parameter is valid (and, given ``max_context``, fits the model)."""
        try:
            for name in ("pred_len", "sample_count", "min_history"):
                check_int(name, getattr(self, name), 1)
            for name in ("lookback", "batch_size"):
                if getattr(self, name) is not None:
                    check_int(name, getattr(self, name), 1)
            self.sampling()
            if not self.quantiles:
                raise InputError("quantiles must name at least one level, such as [0.1, 0.5, 0.9].")
            check_quantiles(self.quantiles)
            if self.seed is not None:
                check_int("seed", self.seed, 0, MAX_SEED)
            check_dtype(self.dtype)
        except InputError as exc:
            raise ParamsError(str(exc)) from None
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ParamsError(f"model must name an alias (champion) or a version (3), got {self.model!r}.")
        if max_context is not None:
            if self.pred_len > max_context:
                raise ParamsError(f"pred_len {self.pred_len} exceeds the model's max_context {max_context}.")
            if self.window(max_context) < self.min_history:
                raise ParamsError(
                    f"lookback {self.window(max_context)} is below min_history {self.min_history}; "
                    "raise lookback or lower min_history."
                )

    def sampling(self) -> SamplingParams:
        """The sampling parameters the predictor draws with."""
        return SamplingParams(T=self.T, top_k=self.top_k, top_p=self.top_p)

    def window(self, max_context: int) -> int:
        """History bars given to the model: lookback, or what fits beside pred_len in max_context."""
        return self.lookback if self.lookback is not None else max_context - self.pred_len

    def resolve(self, max_context: int, model: str, batch_size: int, seed_key: str) -> ForecastParams:
        """These parameters checked against the model and with every empty value filled: the lookback the
        run reads, the model reference, the decode batch size and a seed derived from ``seed_key``."""
        self.check(max_context)
        return dataclasses.replace(
            self,
            lookback=self.window(max_context),
            model=self.model or model,
            batch_size=self.batch_size or batch_size,
            seed=self.seed if self.seed is not None else derive_seed(0, seed_key),
        )

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["quantiles"] = list(self.quantiles)
        return values
