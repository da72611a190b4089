"""Layers shared by the Kronos tokenizer and predictor.

Module and parameter names follow upstream Kronos so that published state dicts load unchanged.
Attention takes its core as an argument (``attend``): the same block runs a plain causal pass over a
whole window or one step against a key/value cache (see ``kronos_tasks.inference.cache``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# attend(q, k, v) -> attention output; q, k, v: [B, H, L, head_dim] with rotary positions applied.
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [B, 1, L, head_dim]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Half precision is normalised in float32 (as upstream does); float64 stays float64.
        xf = x if x.dtype == torch.float64 else x.float()
        normed = xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, ff_dim: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, ff_dim, bias=False)
        self.w3 = nn.Linear(d_model, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RotaryEmbedding(nn.Module):
    """Rotary positions in the half-split layout (the second half of each head rotates against the first)."""

    def __init__(self, head_dim: int):
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        # Derived from head_dim, so not stored; upstream's files carry it and the loader checks it.
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> Rope:
        """cos and sin for integer ``positions`` [B, L], each shaped [B, 1, L, head_dim]."""
        freqs = positions.to(self.inv_freq.dtype).unsqueeze(-1) * self.inv_freq  # [B, L, head_dim/2]
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)  # [B, 1, L, head_dim]
        return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    cos, sin = rope
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def positions_from_mask(valid: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Rotary positions [B, L]: 0, 1, ... counted over the valid (unpadded) positions of each row."""
    if valid is None:
        return torch.arange(length, device=device).expand(batch, length)
    return (valid.long().cumsum(-1) - 1).clamp_(min=0)


def causal_attend(valid: torch.Tensor | None) -> Attend:
    """Causal self-attention over a window, ignoring the keys of padded positions (``valid`` [B, L], True = real)."""
    if valid is None:
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    length = valid.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    mask = causal & valid[:, None, None, :]
    # A padded query sees no real key; letting it see itself keeps its (unused) output finite.
    mask |= torch.eye(length, dtype=torch.bool, device=valid.device)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def heads(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, L, hd]

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = y.shape
        y = y.transpose(1, 2).contiguous().view(batch, length, self.n_heads * self.head_dim)  # [B, L, D]
        return self.out_proj(y)

    def forward(self, x: torch.Tensor, rope: Rope, attend: Attend) -> torch.Tensor:
        q = apply_rope(self.heads(self.q_proj, x), rope)
        k = apply_rope(self.heads(self.k_proj, x), rope)
        v = self.heads(self.v_proj, x)
        return self.merge(attend(q, k, v))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1 x), then + ffn(norm2 x)."""

    def __init__(self, d_model: int, n_heads: int, ff_dim: int):
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.self_attn = Attention(d_model, n_heads)
        self.norm2 = RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ff_dim)

    def forward(self, x: torch.Tensor, rope: Rope, attend: Attend) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), rope, attend)
        return x + self.ffn(self.norm2(x))
