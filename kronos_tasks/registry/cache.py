"""The model cache: verified local copies of registry versions, one folder per version and checksum.

Reading it needs no MLflow: a task whose pinned versions are already here, intact, loads them without
asking the registry (``cached_pair``); ``Registry.resolve`` fills it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kronos_tasks.hashing import sha256_file

from .pinned import PinnedPair

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"  # the Hugging Face layout (model.checkpoint)


def cache_folder(cache: Path, name: str, version: str, sha256: str) -> Path:
    """Where the local copy of version ``version`` of ``name`` (weights ``sha256``) lives under ``cache``."""
    return cache / name / f"v{version}-{sha256[:16]}"


def intact(folder: Path, sha256: str | None, config_sha256: str | None) -> bool:
    """Whether ``folder`` holds a weights file and a config whose SHA-256 are ``sha256`` and ``config_sha256``."""
    weights, config = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    return (
        sha256 is not None
        and config_sha256 is not None
        and weights.is_file()
        and config.is_file()
        and sha256_file(weights) == sha256
        and sha256_file(config) == config_sha256
    )


def cached_pair(cache: Path, pinned: PinnedPair) -> PinnedPair | None:
    """``pinned`` with the paths of its local copies when both of its versions are in ``cache`` with the
    checksums it pinned (weights and config); None when either is missing or differs (``Registry.resolve``
    fetches it). The copies are exactly the pinned weights whatever the registry serves now."""
    model = cache_folder(cache, pinned.model_name, pinned.model_version, pinned.model_sha256)
    tokenizer = cache_folder(cache, pinned.tokenizer_name, pinned.tokenizer_version, pinned.tokenizer_sha256)
    if not (
        intact(model, pinned.model_sha256, pinned.model_config_sha256)
        and intact(tokenizer, pinned.tokenizer_sha256, pinned.tokenizer_config_sha256)
    ):
        return None
    return replace(pinned, model_path=str(model), tokenizer_path=str(tokenizer))
