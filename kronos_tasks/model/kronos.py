"""Kronos: a decoder-only Transformer over (s1, s2) token pairs with time-of-bar embeddings.

At each position the final hidden state (the "context") gives s1 logits through ``head.proj_s1``.
The s2 logits are conditioned on a chosen s1: the s1 embedding queries the contexts of the window
through the dependency-aware cross-attention layer, whose output is added to the context, normalised
and projected by ``head.proj_s2``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import DEPENDENCY_LAYER_HEADS, KronosConfig
from .layers import (
    Attend,
    Attention,
    Embedding,
    Linear,
    RMSNorm,
    Rope,
    RotaryEmbedding,
    TransformerBlock,
    apply_rope,
    causal_attend,
    dropout,
    positions_from_mask,
)

# Sizes of the five time-feature vocabularies: minute, hour, weekday, day of month, month.
TIME_FEATURE_SIZES = {"minute": 60, "hour": 24, "weekday": 7, "day": 32, "month": 13}


class HierarchicalEmbedding(nn.Module):
    def __init__(self, s1_bits: int, s2_bits: int, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.emb_s1 = Embedding(2**s1_bits, d_model)
        self.emb_s2 = Embedding(2**s2_bits, d_model)
        self.fusion_proj = Linear(2 * d_model, d_model)

    def forward(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor) -> torch.Tensor:
        scale = math.sqrt(self.d_model)
        both = torch.cat([self.emb_s1(s1_ids) * scale, self.emb_s2(s2_ids) * scale], dim=-1)  # [B, L, 2D]
        return self.fusion_proj(both)  # [B, L, D]


class FixedEmbedding(nn.Module):
    """Sinusoidal table used for time features when ``learn_te`` is false (stored in the checkpoint too)."""

    def __init__(self, size: int, d_model: int):
        super().__init__()
        # Computed on the CPU, then moved to the device the module is built on (see RotaryEmbedding).
        position = torch.arange(size, device="cpu").float().unsqueeze(1)
        div_term = (torch.arange(0, d_model, 2, device="cpu").float() * -(math.log(10000.0) / d_model)).exp()
        table = torch.zeros(size, d_model, device="cpu")
        table[:, 0::2] = torch.sin(position * div_term)
        table[:, 1::2] = torch.cos(position * div_term)
        self.emb = Embedding(size, d_model)
        self.emb.weight = nn.Parameter(table.to(torch.get_default_device()), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x)


class TemporalEmbedding(nn.Module):
    def __init__(self, d_model: int, learn_te: bool):
        super().__init__()
        make = Embedding if learn_te else FixedEmbedding
        self.minute_embed = make(TIME_FEATURE_SIZES["minute"], d_model)
        self.hour_embed = make(TIME_FEATURE_SIZES["hour"], d_model)
        self.weekday_embed = make(TIME_FEATURE_SIZES["weekday"], d_model)
        self.day_embed = make(TIME_FEATURE_SIZES["day"], d_model)
        self.month_embed = make(TIME_FEATURE_SIZES["month"], d_model)

    def forward(self, stamp: torch.Tensor) -> torch.Tensor:
        """stamp [B, L, 5] (minute, hour, weekday, day, month) -> [B, L, D]."""
        x = stamp.long()
        # Summed in upstream's order, so float results match bit for bit.
        return (
            self.hour_embed(x[..., 1])
            + self.weekday_embed(x[..., 2])
            + self.day_embed(x[..., 3])
            + self.month_embed(x[..., 4])
            + self.minute_embed(x[..., 0])
        )


class DependencyAwareLayer(nn.Module):
    """Cross-attention from an s1 embedding (query) to the contexts of the window (keys, values).

    Its output is added to the contexts and normalised: the input of the s2 head. ``query``,
    ``keys_values`` and ``combine`` are the three parts of ``forward``, for decoding against a cache.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.cross_attn = Attention(d_model, DEPENDENCY_LAYER_HEADS)
        self.norm = RMSNorm(d_model)
        self.rotary = RotaryEmbedding(d_model // DEPENDENCY_LAYER_HEADS)

    def query(self, s1_embedding: torch.Tensor) -> torch.Tensor:
        """Query heads for s1 embeddings [B, Lq, D] -> [B, H, Lq, hd] (not rotated)."""
        attn = self.cross_attn
        return attn.heads(attn.q_proj(s1_embedding))

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value heads for contexts [B, L, D] -> 2 x [B, H, L, hd] (not rotated)."""
        attn = self.cross_attn
        k, v = attn.kv(context).chunk(2, dim=-1)
        return attn.heads(k), attn.heads(v)

    def combine(self, context: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Contexts [B, L, D] plus the attention output [B, H, Lq, hd] (Lq is L or 1, broadcast), normalised."""
        return self.norm(context + self.cross_attn.merge(attended))

    def forward(
        self,
        context: torch.Tensor,
        s1_embedding: torch.Tensor,
        valid: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """Contexts [B, L, D] and s1 embeddings [B, Lq, D] (Lq is 1 or L) -> s2 head input [B, L, D].

        ``valid`` [B, L] marks the real (unpadded) positions. With Lq = L (one s1 per position, as in
        training) queries and keys take the window's rotary positions and, as upstream does in eval mode,
        attention is not causal; ``causal=True`` lets position t see contexts up to t only, as upstream
        does in training mode (``training.objectives``). With Lq = 1 (the next token's s1, as in generation) nothing is rotated:
        upstream rotates both sides by the positions of the query's length, which for one query is
        position 0, the identity.
        """
        batch, length, _ = context.shape
        q = self.query(s1_embedding)
        k, v = self.keys_values(context)
        if s1_embedding.shape[1] == length and length > 1:
            cos, sin = self.rotary(positions_from_mask(valid, batch, length, context.device))
            rope = (cos.transpose(1, 2), sin.transpose(1, 2))  # [B, 1, L, hd], for the head-major layout
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        elif s1_embedding.shape[1] != 1:
            raise ValueError(f"s1 ids must have 1 or {length} positions, got {s1_embedding.shape[1]}.")
        if causal:
            if valid is not None:
                raise ValueError("causal s2 conditioning is for unpadded training windows; pass valid=None.")
            return self.combine(context, F.scaled_dot_product_attention(q, k, v, is_causal=True))
        mask = None if valid is None else valid[:, None, None, :]
        return self.combine(context, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


class DualHead(nn.Module):
    def __init__(self, s1_bits: int, s2_bits: int, d_model: int):
        super().__init__()
        self.proj_s1 = Linear(d_model, 2**s1_bits)
        self.proj_s2 = Linear(d_model, 2**s2_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_s1(x)

    def cond_forward(self, x2: torch.Tensor) -> torch.Tensor:
        return self.proj_s2(x2)


class Kronos(nn.Module):
    """The Kronos predictor. ``Kronos(**config_json)`` accepts exactly the published keys."""

    def __init__(self, **config: Any):
        super().__init__()
        self.config = KronosConfig.from_dict(config, source="Kronos")
        c = self.config
        self.s1_bits, self.s2_bits = c.s1_bits, c.s2_bits
        self.embedding = HierarchicalEmbedding(c.s1_bits, c.s2_bits, c.d_model)
        self.time_emb = TemporalEmbedding(c.d_model, c.learn_te)
        self.transformer = nn.ModuleList(
            [
                TransformerBlock(c.d_model, c.n_heads, c.ff_dim, c.ffn_dropout_p, c.resid_dropout_p)
                for _ in range(c.n_layers)
            ]
        )
        self.token_drop = dropout(c.token_dropout_p)  # on the input embeddings, in training mode
        self.norm = RMSNorm(c.d_model)
        self.dep_layer = DependencyAwareLayer(c.d_model)
        self.head = DualHead(c.s1_bits, c.s2_bits, c.d_model)
        self.rotary = RotaryEmbedding(c.d_model // c.n_heads)

    @property
    def device(self) -> torch.device:
        return self.head.proj_s1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.proj_s1.weight.dtype

    def rope(self, positions: torch.Tensor) -> Rope:
        return self.rotary(positions)

    def embed(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None) -> torch.Tensor:
        """Token pairs [B, L] and time features [B, L, 5] -> input embeddings [B, L, D]."""
        x = self.embedding(s1_ids, s2_ids)
        if stamp is not None:
            x = x + self.time_emb(stamp)
        return x

    def context(self, x: torch.Tensor, rope: Rope, attends: list[Attend]) -> torch.Tensor:
        """Input embeddings [B, L, D] -> contexts [B, L, D], one ``attend`` per Transformer block."""
        for block, attend in zip(self.transformer, attends):
            x = block(x, rope, attend)
        return self.norm(x)

    def decode_s1(self, s1_ids, s2_ids, stamp=None, padding_mask=None):
        """s1 logits [B, L, 2**s1_bits] and contexts [B, L, D] for token pairs [B, L].

        ``padding_mask`` [B, L] marks left padding (True = padded); each row's positions count from its
        first real token, so a padded row gives what the unpadded row gives alone.
        """
        valid = None if padding_mask is None else ~padding_mask
        batch, length = s1_ids.shape
        rope = self.rope(positions_from_mask(valid, batch, length, s1_ids.device))
        attends = [causal_attend(valid)] * len(self.transformer)
        context = self.context(self.embed(s1_ids, s2_ids, stamp), rope, attends)
        return self.head(context), context

    def s2_query(self, s1_ids: torch.Tensor) -> torch.Tensor:
        """The dependency layer's query heads for s1 ids [B, Lq] -> [B, H, Lq, hd] (no rotation)."""
        return self.dep_layer.query(self.embedding.emb_s1(s1_ids))

    def s2_logits(self, context: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """s2 logits from contexts [B, L, D] and the dependency layer's attention output [B, H, Lq, hd]."""
        return self.head.cond_forward(self.dep_layer.combine(context, attended))

    def decode_s2(self, context, s1_ids, padding_mask=None):
        """s2 logits [B, L, 2**s2_bits] conditioned on s1 ids, given contexts [B, L, D] from ``decode_s1``.

        With ``s1_ids`` [B, 1] (the next token's s1, as in generation) the logits for the next token are
        the last row; with ``s1_ids`` [B, L] each position is conditioned on its own s1 (see
        ``DependencyAwareLayer.forward``).
        """
        valid = None if padding_mask is None else ~padding_mask
        return self.head.cond_forward(self.dep_layer(context, self.embedding.emb_s1(s1_ids), valid))

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> Kronos:
        """Load a Hugging Face layout folder (config.json + model.safetensors), in eval mode."""
        from .checkpoint import load_pretrained

        return load_pretrained(cls, folder, device)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write config.json + model.safetensors in the layout of the published checkpoints."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, folder)
