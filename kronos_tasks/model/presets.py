"""Architectures of the published checkpoints, and random initialisation for tests and benchmarks.

The shapes are those of the ``config.json`` files on the Hugging Face hub (NeoQuasar/Kronos-*). A
randomly initialised model forecasts noise; it exists to test and measure the machinery, and the
pipeline tags such versions as untrained wherever they are registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .kronos import Kronos
from .layers import RMSNorm
from .tokenizer import KronosTokenizer

_DROPOUT0 = {"ffn_dropout_p": 0.0, "attn_dropout_p": 0.0, "resid_dropout_p": 0.0}

TOKENIZER_PRESETS: dict[str, dict] = {
    "Kronos-Tokenizer-base": {
        "d_in": 6,
        "d_model": 256,
        "n_heads": 4,
        "ff_dim": 512,
        "n_enc_layers": 4,
        "n_dec_layers": 4,
        **_DROPOUT0,
        "s1_bits": 10,
        "s2_bits": 10,
        "beta": 0.05,
        "gamma0": 1.0,
        "gamma": 1.1,
        "zeta": 0.05,
        "group_size": 4,
    },
    "Kronos-Tokenizer-2k": {
        "d_in": 6,
        "d_model": 256,
        "n_heads": 4,
        "ff_dim": 512,
        "n_enc_layers": 4,
        "n_dec_layers": 4,
        **_DROPOUT0,
        "s1_bits": 10,
        "s2_bits": 10,
        "beta": 0.05,
        "gamma0": 1.0,
        "gamma": 1.1,
        "zeta": 0.05,
        "group_size": 5,
    },
    "tiny": {
        "d_in": 6,
        "d_model": 32,
        "n_heads": 4,
        "ff_dim": 64,
        "n_enc_layers": 3,
        "n_dec_layers": 3,
        **_DROPOUT0,
        "s1_bits": 6,
        "s2_bits": 6,
        "beta": 0.05,
        "gamma0": 1.0,
        "gamma": 1.1,
        "zeta": 0.05,
        "group_size": 4,
    },
}

MODEL_PRESETS: dict[str, dict] = {
    "Kronos-mini": {
        "s1_bits": 10,
        "s2_bits": 10,
        "n_layers": 4,
        "d_model": 256,
        "n_heads": 4,
        "ff_dim": 512,
        "ffn_dropout_p": 0.2,
        "attn_dropout_p": 0.0,
        "resid_dropout_p": 0.2,
        "token_dropout_p": 0.0,
        "learn_te": True,
    },
    "Kronos-small": {
        "s1_bits": 10,
        "s2_bits": 10,
        "n_layers": 8,
        "d_model": 512,
        "n_heads": 8,
        "ff_dim": 1024,
        "ffn_dropout_p": 0.25,
        "attn_dropout_p": 0.1,
        "resid_dropout_p": 0.25,
        "token_dropout_p": 0.1,
        "learn_te": True,
    },
    "Kronos-base": {
        "s1_bits": 10,
        "s2_bits": 10,
        "n_layers": 12,
        "d_model": 832,
        "n_heads": 16,
        "ff_dim": 2048,
        "ffn_dropout_p": 0.2,
        "attn_dropout_p": 0.0,
        "resid_dropout_p": 0.2,
        "token_dropout_p": 0.0,
        "learn_te": True,
    },
    "tiny": {
        "s1_bits": 6,
        "s2_bits": 6,
        "n_layers": 2,
        "d_model": 32,
        "n_heads": 4,
        "ff_dim": 64,
        **_DROPOUT0,
        "token_dropout_p": 0.0,
        "learn_te": True,
    },
}


@dataclass(frozen=True)
class PresetPair:
    tokenizer: str
    model: str
    max_context: int


# Which tokenizer each published model was trained with, and its context length.
PAIRS: dict[str, PresetPair] = {
    "Kronos-mini": PresetPair("Kronos-Tokenizer-2k", "Kronos-mini", 2048),
    "Kronos-small": PresetPair("Kronos-Tokenizer-base", "Kronos-small", 512),
    "Kronos-base": PresetPair("Kronos-Tokenizer-base", "Kronos-base", 512),
    "tiny": PresetPair("tiny", "tiny", 512),
}


def _init_weights(module: nn.Module, d_model: int) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding) and module.weight.requires_grad:
        nn.init.normal_(module.weight, mean=0.0, std=d_model**-0.5)
    elif isinstance(module, RMSNorm):
        nn.init.ones_(module.weight)


def random_tokenizer(preset: str | dict = "tiny", seed: int = 0) -> KronosTokenizer:
    """An untrained tokenizer of a preset's (or an explicit config's) shape, deterministic in ``seed``."""
    config = TOKENIZER_PRESETS[preset] if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    tokenizer = KronosTokenizer(**config)
    tokenizer.apply(lambda m: _init_weights(m, config["d_model"]))
    tokenizer.requires_grad_(False)
    return tokenizer.eval()


def random_model(preset: str | dict = "tiny", seed: int = 0) -> Kronos:
    """An untrained Kronos of a preset's (or an explicit config's) shape, deterministic in ``seed``."""
    config = MODEL_PRESETS[preset] if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    model = Kronos(**config)
    model.apply(lambda m: _init_weights(m, config["d_model"]))
    model.requires_grad_(False)
    return model.eval()


def write_random_pair(folder: str | Path, preset: str = "tiny", seed: int = 0) -> tuple[Path, Path]:
    """Save an untrained tokenizer and model of ``preset`` under ``folder``/tokenizer and ``folder``/model."""
    pair = PAIRS[preset]
    folder = Path(folder)
    tokenizer_dir = random_tokenizer(pair.tokenizer, seed).save_pretrained(folder / "tokenizer")
    model_dir = random_model(pair.model, seed + 1).save_pretrained(folder / "model")
    return tokenizer_dir, model_dir


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
