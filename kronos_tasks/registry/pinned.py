"""A tokenizer and model pair pinned to exact registry versions: what every forecast of a run uses."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PinnedPair:
    """Exactly which weights a forecast uses: names, versions, run ids, checksums and local folders."""

    model_name: str
    model_version: str
    model_sha256: str
    model_run_id: str | None
    model_path: str
    tokenizer_name: str
    tokenizer_version: str
    tokenizer_sha256: str
    tokenizer_run_id: str | None
    tokenizer_path: str
    max_context: int
    alias: str | None = None
    trained: bool = True
    model_logged_id: str | None = None  # MLflow 3 logged models behind the versions (None: registered before)
    tokenizer_logged_id: str | None = None
    note: str | None = None  # a warning registered with the version, e.g. "demonstration model"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PinnedPair:
        return cls(**values)

    @property
    def warning(self) -> str | None:
        """What a reader of this pair's forecasts must know about its weights, if anything."""
        if not self.trained:
            return "UNTRAINED model: random weights, its forecasts are noise"
        return self.note

    @property
    def label(self) -> str:
        """``kronos-model/3``, with ``(untrained)`` for random weights."""
        return f"{self.model_name}/{self.model_version}" + ("" if self.trained else " (untrained)")

    def same_weights(self, other: PinnedPair) -> bool:
        """Whether ``other`` serves exactly these versions and checksums."""
        keys = ("model_name", "model_version", "model_sha256", "tokenizer_version", "tokenizer_sha256")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def audit_fields(self) -> dict[str, Any]:
        """What a forecast run records about its weights (the columns of the same names in forecast_runs)."""
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "model_sha256": self.model_sha256,
            "tokenizer_name": self.tokenizer_name,
            "tokenizer_version": self.tokenizer_version,
            "tokenizer_sha256": self.tokenizer_sha256,
            "model_alias": self.alias,
            "max_context": self.max_context,
        }
