"""Temperature, top-k and top-p filtering, and sampling driven by a counter-based random stream.

Every random draw is a hash of (series seed, sample index, step, stage), computed with integer ops on
the device. Draws therefore do not depend on which other series share the batch, on the batch size or
on the device, and no generator state crosses the host in the loop.
"""

from __future__ import annotations

import torch

from .params import STREAM_VERSION, SamplingParams

__all__ = [
    "STREAM_VERSION",
    "SamplingParams",
    "filter_logits",
    "mix32",
    "sample_from_logits",
    "sampling_dtype",
    "stream_keys",
    "uniforms",
]

_MASK32 = 0xFFFFFFFF


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the top ``top_k``, then outside the nucleus of mass ``top_p``.

    The nucleus keeps tokens in order of probability while the mass of the tokens before them is at most
    ``top_p`` (so the token that crosses the threshold stays, and the most likely token always stays).
    """
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
        mass = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop_sorted = torch.zeros_like(mass, dtype=torch.bool)
        drop_sorted[..., 1:] = mass[..., :-1] > top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for x in [0, 2**32), in int64 without overflow."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with full avalanche (C. Wellons' "lowbias32"), on int64 tensors."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    # The two multipliers and three shifts are the ones Wellons' search found to give the lowest bias.
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def stream_keys(seeds: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row from a 63-bit series seed and the row's sample index (both int64 [R])."""
    # 0x9E3779B9 is 2**32 / golden ratio: it keeps seed 0 away from the hash's fixed point at 0.
    key = mix32(seeds ^ 0x9E3779B9)
    key = mix32(key ^ (seeds >> 32))  # the seed's high 31 bits, mixed in after its low 32
    return mix32(key ^ sample_index)


def sampling_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """The dtype draws and probabilities are computed in: float32, or float64 for a float64 model."""
    return torch.promote_types(model_dtype, torch.float32)


def uniforms(keys: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """Uniform draws in (0, 1] of the rows' streams for ``steps`` steps: [R, steps, 2].

    [:, i, 0] draws the s1 token of step i and [:, i, 1] its s2 token; a draw depends on its row's key,
    step and stage only.
    """
    counters = 2 * torch.arange(steps, device=keys.device)[:, None] + torch.arange(2, device=keys.device)
    mixed = mix32(keys[:, None, None] ^ counters)  # [R, steps, 2]
    # A second round with a fixed odd offset, so that draws are not a plain function of key ^ counter.
    bits = mix32(mixed + 0x632BE5AB) >> 8  # 24 bits: exact in float32
    return (bits.to(dtype) + 0.5) * 2.0**-24


def sample_from_logits(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor) -> torch.Tensor:
    """Token ids [R] drawn from ``logits`` [R, V] with one uniform per row ``u`` [R] (inverse CDF).

    Half-precision logits are sampled in float32: a bfloat16 cumulative sum over thousands of tokens
    would round most of the distribution away.
    """
    logits = logits.to(sampling_dtype(logits.dtype))
    logits = filter_logits(logits / params.T, params.top_k, params.top_p)
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)  # [R, V]
    # The first token whose cumulative mass reaches u * total: never a token of zero probability.
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
