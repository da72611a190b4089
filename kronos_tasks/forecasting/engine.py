"""The one way a forecast predictor is built: from a registered pair or from local checkpoint folders."""

from __future__ import annotations

from pathlib import Path

from kronos_tasks.inference.predictor import KronosPredictor, default_device
from kronos_tasks.model import Kronos, KronosTokenizer
from kronos_tasks.registry.pinned import PinnedPair


def resolve_device(requested: str) -> str:
    """``auto`` -> CUDA when available, else CPU; anything else as given."""
    return default_device() if requested == "auto" else requested


def load_predictor(
    tokenizer_path: str | Path,
    model_path: str | Path,
    max_context: int,
    device: str,
    batch_size: int,
    dtype: str = "float32",
) -> KronosPredictor:
    """A predictor from two checkpoint folders (config.json + model.safetensors) on ``device`` (or ``auto``),
    in ``dtype``."""
    device = resolve_device(device)
    tokenizer = KronosTokenizer.from_pretrained(tokenizer_path, device)
    model = Kronos.from_pretrained(model_path, device)
    return KronosPredictor(model, tokenizer, device=device, max_context=max_context, batch_size=batch_size, dtype=dtype)


def pinned_predictor(pair: PinnedPair, device: str, batch_size: int, dtype: str = "float32") -> KronosPredictor:
    """A predictor from the verified local copies of a pinned registry pair, in ``dtype``."""
    return load_predictor(pair.tokenizer_path, pair.model_path, pair.max_context, device, batch_size, dtype)
