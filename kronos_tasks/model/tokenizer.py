"""KronosTokenizer: each bar of 6 normalised features <-> a coarse s1 and a fine s2 token.

Encoding: a causal Transformer encoder, a projection to s1_bits + s2_bits dimensions and Binary
Spherical Quantization, which keeps only the sign of each dimension. Dimension i of the s1 part is
bit i (least significant first) of the s1 id; the s2 part likewise. Decoding maps the bits back to
+-1/sqrt(s1_bits + s2_bits) and runs a causal Transformer decoder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TokenizerConfig
from .layers import Attend, Linear, Rope, RotaryEmbedding, TransformerBlock, causal_attend, positions_from_mask


class BSQuantizer(nn.Module):
    """Sign quantization of the code vector into two integer ids. Holds no weights."""

    def __init__(self, s1_bits: int, s2_bits: int):
        super().__init__()
        self.s1_bits = s1_bits
        self.s2_bits = s2_bits

    def codes_to_ids(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., s1_bits + s2_bits] real codes -> (s1_ids, s2_ids), each [...] int64."""
        bits = (z > 0).long()
        s1_weights = 2 ** torch.arange(self.s1_bits, device=z.device)
        s2_weights = 2 ** torch.arange(self.s2_bits, device=z.device)
        s1_ids = (bits[..., : self.s1_bits] * s1_weights).sum(-1)
        s2_ids = (bits[..., self.s1_bits :] * s2_weights).sum(-1)
        return s1_ids, s2_ids

    def ids_to_codes(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(s1_ids, s2_ids), each [...] -> [..., s1_bits + s2_bits] codes of +-1/sqrt(s1_bits + s2_bits)."""
        s1_bits = (s1_ids.unsqueeze(-1) >> torch.arange(self.s1_bits, device=s1_ids.device)) & 1
        s2_bits = (s2_ids.unsqueeze(-1) >> torch.arange(self.s2_bits, device=s2_ids.device)) & 1
        bits = torch.cat([s1_bits, s2_bits], dim=-1).to(dtype)
        return (bits * 2 - 1) * (1.0 / math.sqrt(self.s1_bits + self.s2_bits))


class KronosTokenizer(nn.Module):
    """Tokenizer of OHLCVA bars. ``KronosTokenizer(**config_json)`` accepts exactly the published keys."""

    def __init__(self, **config: Any):
        super().__init__()
        self.config = TokenizerConfig.from_dict(config, source="KronosTokenizer")
        c = self.config
        self.s1_bits, self.s2_bits = c.s1_bits, c.s2_bits
        codebook_dim = c.s1_bits + c.s2_bits
        self.embed = Linear(c.d_in, c.d_model)
        self.head = Linear(c.d_model, c.d_in)

        # Upstream builds n_layers - 1 blocks on each side; the published weights have that many.
        def block() -> TransformerBlock:
            return TransformerBlock(c.d_model, c.n_heads, c.ff_dim, c.ffn_dropout_p, c.resid_dropout_p)

        self.encoder = nn.ModuleList([block() for _ in range(c.n_enc_layers - 1)])
        self.decoder = nn.ModuleList([block() for _ in range(c.n_dec_layers - 1)])
        self.quant_embed = Linear(c.d_model, codebook_dim)
        # Reconstructs from the s1 bits alone; used in training only, kept so the weights round-trip.
        self.post_quant_embed_pre = Linear(c.s1_bits, c.d_model)
        self.post_quant_embed = Linear(codebook_dim, c.d_model)
        self.tokenizer = BSQuantizer(c.s1_bits, c.s2_bits)
        self.rotary = RotaryEmbedding(c.d_model // c.n_heads)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def rope(self, positions: torch.Tensor) -> Rope:
        return self.rotary(positions)

    def encode(self, x: torch.Tensor, half: bool = True, padding_mask: torch.Tensor | None = None):
        """Bars [B, L, d_in] -> (s1_ids, s2_ids), each [B, L] int64.

        ``padding_mask`` [B, L] marks left padding (True = padded); padded positions get ids that are
        meaningless and must be ignored. ``half=False`` returns the joint id s1 + s2 << s1_bits instead,
        with the bit order upstream uses for its un-split index.
        """
        valid = None if padding_mask is None else ~padding_mask
        batch, length, _ = x.shape
        rope = self.rope(positions_from_mask(valid, batch, length, x.device))
        attend = causal_attend(valid)
        z = self.embed(x)
        for block in self.encoder:
            z = block(z, rope, attend)
        s1_ids, s2_ids = self.tokenizer.codes_to_ids(self.quant_embed(z))  # [B, L] each
        if half:
            return s1_ids, s2_ids
        return s1_ids + (s2_ids << self.s1_bits)

    def decode_hidden(self, codes: torch.Tensor, rope: Rope, attends: list[Attend]) -> torch.Tensor:
        """Codes [B, L, s1_bits + s2_bits] -> bars [B, L, d_in], one ``attend`` per decoder block."""
        z = self.post_quant_embed(codes)
        for block, attend in zip(self.decoder, attends):
            z = block(z, rope, attend)
        return self.head(z)

    def decode(self, x, half: bool = True, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(s1_ids, s2_ids) [B, L] each (or joint ids if ``half=False``) -> reconstructed bars [B, L, d_in]."""
        if half:
            s1_ids, s2_ids = x
        else:
            s1_ids, s2_ids = x & ((1 << self.s1_bits) - 1), x >> self.s1_bits
        valid = None if padding_mask is None else ~padding_mask
        batch, length = s1_ids.shape
        rope = self.rope(positions_from_mask(valid, batch, length, s1_ids.device))
        codes = self.tokenizer.ids_to_codes(s1_ids, s2_ids, self.dtype)
        return self.decode_hidden(codes, rope, [causal_attend(valid)] * len(self.decoder))

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> KronosTokenizer:
        """Load a Hugging Face layout folder (config.json + model.safetensors), in eval mode."""
        from .checkpoint import load_pretrained

        return load_pretrained(cls, folder, device)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write config.json + model.safetensors in the layout of the published checkpoints."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, folder)
