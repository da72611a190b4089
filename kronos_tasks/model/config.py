"""Configurations of the Kronos tokenizer and predictor, keyed exactly as the published ``config.json`` files.

The published checkpoints (NeoQuasar/Kronos-*) were written by upstream's ``PyTorchModelHubMixin``, so their
``config.json`` holds the constructor arguments and nothing else. The dropout rates and the quantizer's loss
weights (beta, gamma0, gamma, zeta, group_size) only matter for training; they are kept so that a folder
round-trips unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kronos_tasks.errors import KronosFlowError

# Heads of the s2 cross-attention (the dependency-aware layer). Upstream builds that layer with its
# default of 4 heads whatever the model's n_heads, and the published weights depend on it.
DEPENDENCY_LAYER_HEADS = 4


class ConfigError(KronosFlowError, ValueError):
    """A configuration that does not describe a Kronos tokenizer or model."""


def _check_fields(cls: type, values: Mapping[str, Any], source: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    missing = [n for n in names if n not in values]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} for {cls.__name__}; "
            f"the published config.json keys are {sorted(names)}. Remove or rename them."
        )
    if missing:
        raise ConfigError(f"{source}: missing key(s) {missing} for {cls.__name__}; add them to the config.")


def _check_types(config: Any, source: str) -> None:
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.type in ("bool", bool):
            ok = isinstance(value, bool)
        elif field.type in ("int", int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:  # every other field is a float, which JSON may write as an integer
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{source}: key {field.name!r} must be of type {field.type}, got {value!r}.")


def _check_positive(source: str, **values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{source}: {name} must be positive, got {value}.")


def _check_bits(source: str, s1_bits: int, s2_bits: int) -> None:
    for name, bits in (("s1_bits", s1_bits), ("s2_bits", s2_bits)):
        if not 1 <= bits <= 16:
            raise ConfigError(f"{source}: {name} must be between 1 and 16, got {bits}.")


@dataclass(frozen=True)
class TokenizerConfig:
    """Constructor arguments of ``KronosTokenizer`` (Binary Spherical Quantization of OHLCVA bars)."""

    d_in: int
    d_model: int
    n_heads: int
    ff_dim: int
    n_enc_layers: int
    n_dec_layers: int
    ffn_dropout_p: float
    attn_dropout_p: float
    resid_dropout_p: float
    s1_bits: int
    s2_bits: int
    beta: float
    gamma0: float
    gamma: float
    zeta: float
    group_size: int

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "tokenizer config") -> TokenizerConfig:
        """Build and validate a config; errors name ``source`` and the offending key."""
        _check_fields(cls, values, source)
        config = cls(**dict(values))
        _check_types(config, source)
        _check_positive(
            source,
            d_in=config.d_in,
            d_model=config.d_model,
            n_heads=config.n_heads,
            ff_dim=config.ff_dim,
            n_enc_layers=config.n_enc_layers,
            n_dec_layers=config.n_dec_layers,
            group_size=config.group_size,
        )
        _check_bits(source, config.s1_bits, config.s2_bits)
        if config.d_model % config.n_heads:
            raise ConfigError(f"{source}: d_model {config.d_model} is not divisible by n_heads {config.n_heads}.")
        if (config.d_model // config.n_heads) % 2:
            raise ConfigError(f"{source}: the head size d_model/n_heads must be even for rotary positions.")
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class KronosConfig:
    """Constructor arguments of ``Kronos``, the autoregressive predictor of (s1, s2) tokens."""

    s1_bits: int
    s2_bits: int
    n_layers: int
    d_model: int
    n_heads: int
    ff_dim: int
    ffn_dropout_p: float
    attn_dropout_p: float
    resid_dropout_p: float
    token_dropout_p: float
    learn_te: bool

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "model config") -> KronosConfig:
        """Build and validate a config; errors name ``source`` and the offending key."""
        _check_fields(cls, values, source)
        config = cls(**dict(values))
        _check_types(config, source)
        _check_positive(
            source, n_layers=config.n_layers, d_model=config.d_model, n_heads=config.n_heads, ff_dim=config.ff_dim
        )
        _check_bits(source, config.s1_bits, config.s2_bits)
        for heads in (config.n_heads, DEPENDENCY_LAYER_HEADS):
            if config.d_model % heads or (config.d_model // heads) % 2:
                raise ConfigError(
                    f"{source}: d_model {config.d_model} must split into an even head size for {heads} heads."
                )
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
