"""The Kronos network: tokenizer, predictor and checkpoint I/O in the Hugging Face layout."""

from .checkpoint import CheckpointError, check_pair, load_pretrained, save_pretrained
from .config import ConfigError, KronosConfig, TokenizerConfig
from .kronos import Kronos
from .tokenizer import KronosTokenizer

__all__ = [
    "CheckpointError",
    "ConfigError",
    "Kronos",
    "KronosConfig",
    "KronosTokenizer",
    "TokenizerConfig",
    "check_pair",
    "load_pretrained",
    "save_pretrained",
]
