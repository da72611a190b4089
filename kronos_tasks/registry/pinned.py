"""A tokenizer and model pair pinned to exact registry versions: what every forecast of a run uses."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from kronos_tasks.errors import KronosFlowError

TAG_PREFIX = "kronos."
DEFAULT_MAX_CONTEXT = 512


class RegistryError(KronosFlowError, RuntimeError):
    """The model registry cannot do what was asked; the message says why and what to do."""


def parse_ref(ref: str, default_name: str) -> tuple[str, str]:
    """``champion``, ``@champion``, ``3``, ``NAME@alias``, ``NAME/3``, ``models:/NAME@alias`` -> (name, ref)."""
    text = ref.removeprefix("models:/").strip()
    match = re.fullmatch(r"(?:(?P<name>[^@/]+)[@/])?@?(?P<ref>[A-Za-z0-9_.-]+)", text)
    if not match:
        raise RegistryError(f"cannot read model reference {ref!r}; use an alias, a version or NAME@alias.")
    return match.group("name") or default_name, match.group("ref")


def kronos_tags(tags: dict[str, str]) -> dict[str, str]:
    """A version's kronos tags without their prefix."""
    return {k[len(TAG_PREFIX) :]: v for k, v in (tags or {}).items() if k.startswith(TAG_PREFIX)}


def logged_model_id(source: str | None) -> str | None:
    """The MLflow 3 logged model a version was registered from (None for versions registered before)."""
    source = source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def missing_version(name: str, ref: str, known: list[int] | None) -> RegistryError:
    """The error for a version number or alias that ``name`` does not have."""
    if ref.isdigit():
        return RegistryError(f"{name} has no version {ref} (versions: {known or 'none'}); see `kronos-flow models`.")
    return RegistryError(
        f"{name} has no alias @{ref}: register a pair with `kronos-flow register --tokenizer DIR --model DIR "
        f"--alias {ref}` or point it at a version with `kronos-flow promote VERSION --alias {ref}`."
    )


def pair_of(
    model: dict[str, Any],
    tokenizer: dict[str, Any],
    alias: str | None,
    model_path: str = "",
    tokenizer_path: str = "",
) -> PinnedPair:
    """The pinned pair of two registry versions given as {name, version, run_id, source, tags (all of them)}.

    Paths are empty until the versions are fetched (``Registry.resolve`` downloads and verifies them).
    """
    tags, tokenizer_tags = kronos_tags(model["tags"]), kronos_tags(tokenizer["tags"])
    return PinnedPair(
        model_name=model["name"],
        model_version=str(model["version"]),
        model_sha256=tags["sha256"],
        model_config_sha256=tags.get("config_sha256"),
        model_run_id=model["run_id"],
        model_path=model_path,
        tokenizer_name=tokenizer["name"],
        tokenizer_version=str(tokenizer["version"]),
        tokenizer_sha256=tokenizer_tags["sha256"],
        tokenizer_config_sha256=tokenizer_tags.get("config_sha256"),
        tokenizer_run_id=tokenizer["run_id"],
        tokenizer_path=tokenizer_path,
        max_context=int(tags.get("max_context", DEFAULT_MAX_CONTEXT)),
        alias=alias,
        trained=tags.get("trained", "true") == "true",
        model_logged_id=logged_model_id(model["source"]),
        tokenizer_logged_id=logged_model_id(tokenizer["source"]),
        note=tags.get("note"),
    )


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
    model_config_sha256: str | None = None  # of config.json (None: pinned by an earlier release)
    tokenizer_config_sha256: str | None = None

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
