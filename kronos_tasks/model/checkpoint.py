"""Checkpoint folders in the Hugging Face layout: ``config.json`` + ``model.safetensors``.

Only safetensors and JSON are read: nothing is unpickled. Upstream's files also carry buffers that
the architecture derives by itself (rotary frequencies, the quantizer's bit weights). They are
checked against the derived values on load and written on save, so folders move both ways between
kronos-flow and upstream Kronos unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from kronos_tasks.errors import KronosFlowError

from .config import DEPENDENCY_LAYER_HEADS, ConfigError, KronosConfig, TokenizerConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class CheckpointError(KronosFlowError, ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file and what to do."""


def _inv_freq(head_dim: int) -> torch.Tensor:
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))


def derived_tensors(config: KronosConfig | TokenizerConfig) -> dict[str, torch.Tensor]:
    """The buffers upstream stores in its state dict but that follow from the config alone."""
    if isinstance(config, KronosConfig):
        head_dim = config.d_model // config.n_heads
        tensors = {f"transformer.{i}.self_attn.rotary.inv_freq": _inv_freq(head_dim) for i in range(config.n_layers)}
        tensors["dep_layer.cross_attn.rotary.inv_freq"] = _inv_freq(config.d_model // DEPENDENCY_LAYER_HEADS)
        return tensors
    head_dim = config.d_model // config.n_heads
    tensors = {f"encoder.{i}.self_attn.rotary.inv_freq": _inv_freq(head_dim) for i in range(config.n_enc_layers - 1)}
    tensors.update(
        {f"decoder.{i}.self_attn.rotary.inv_freq": _inv_freq(head_dim) for i in range(config.n_dec_layers - 1)}
    )
    codebook_dim = config.s1_bits + config.s2_bits
    tensors["tokenizer.bsq.basis"] = 2 ** torch.arange(codebook_dim - 1, -1, -1)
    tensors["tokenizer.bsq.group_basis"] = 2 ** torch.arange(config.group_size - 1, -1, -1)
    return tensors


def read_config(folder: str | Path) -> dict:
    """The parsed ``config.json`` of a checkpoint folder, with errors that name the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist or is not a folder.")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: a checkpoint folder needs {CONFIG_FILE} and {WEIGHTS_FILE} "
            "(the layout of the published Hugging Face checkpoints)."
        )
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}.") from exc
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} must hold a JSON object of constructor arguments.")
    return values


def weights_path(folder: str | Path) -> Path:
    """Path of the safetensors weights in ``folder``; refuses folders that only hold pickled weights."""
    path = Path(folder) / WEIGHTS_FILE
    if path.is_file():
        return path
    pickles = [p.name for p in Path(folder).glob("*.bin")] + [p.name for p in Path(folder).glob("*.pt*")]
    hint = (
        f" It holds {pickles}: kronos-flow never loads pickled weights; convert them to safetensors first."
        if pickles
        else ""
    )
    raise CheckpointError(f"{path} is missing.{hint}")


LAYER_COUNTS = ("n_layers", "n_enc_layers", "n_dec_layers")  # config keys that each add tensors


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors file's header (nothing else is read)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}.") from exc


def load_pretrained(cls: type[ModuleT], folder: str | Path, device: str | torch.device = "cpu") -> ModuleT:
    """Build ``cls`` from ``folder``'s config and load its weights strictly, in eval mode, without gradients."""
    values = read_config(folder)
    config_path = Path(folder) / CONFIG_FILE
    path = weights_path(folder)
    shapes = _stored_shapes(path)
    layers = sum(v for k, v in values.items() if k in LAYER_COUNTS and isinstance(v, int) and v > 0)
    if layers > len(shapes):
        raise CheckpointError(
            f"{config_path} asks for {layers} layers, but {path} holds only {len(shapes)} tensors: "
            "config.json does not belong to these weights."
        )
    # The config is checked against the file's header on the meta device first: an absurd config.json
    # (or one that belongs to other weights) is refused before anything is allocated.
    try:
        with torch.device("meta"):
            skeleton = cls(**values)
    except ConfigError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from exc
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    derived = {k: tuple(v.shape) for k, v in derived_tensors(skeleton.config).items()}
    del skeleton
    missing = sorted(k for k in expected if k not in shapes)
    unexpected = sorted(k for k in shapes if k not in expected and k not in derived)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match {config_path}: missing tensors {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected tensors {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}. Check that config.json belongs to these weights."
        )
    for key, shape in shapes.items():
        want = expected.get(key, derived.get(key))
        if shape != want:
            raise CheckpointError(f"{path}: tensor {key!r} has shape {shape}, the config implies {want}.")

    module = cls(**values)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}.") from exc
    expected_values, derived_values = module.state_dict(), derived_tensors(module.config)
    for key, tensor in tensors.items():
        if key in derived_values and not torch.allclose(
            tensor.to(derived_values[key].dtype), derived_values[key], rtol=1e-6, atol=0
        ):
            raise CheckpointError(
                f"{path}: tensor {key!r} differs from the value the architecture defines; "
                "the file was not written by Kronos or is damaged."
            )
    module.load_state_dict({k: v for k, v in tensors.items() if k in expected_values}, strict=True)
    module.requires_grad_(False)
    return module.to(device).eval()


def save_pretrained(module: nn.Module, folder: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``module`` into ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    tensors.update(derived_tensors(module.config))
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(module.config.to_dict(), indent=2, sort_keys=True) + "\n")
    return folder


def check_pair(
    tokenizer: TokenizerConfig, model: KronosConfig, tokenizer_name: str = "tokenizer", model_name: str = "model"
) -> None:
    """Raise if the model predicts tokens of other sizes than the tokenizer makes."""
    if (tokenizer.s1_bits, tokenizer.s2_bits) != (model.s1_bits, model.s2_bits):
        raise ConfigError(
            f"{model_name} predicts s1_bits={model.s1_bits}, s2_bits={model.s2_bits} but {tokenizer_name} "
            f"makes s1_bits={tokenizer.s1_bits}, s2_bits={tokenizer.s2_bits}: pair the model with the "
            "tokenizer it was trained with."
        )
