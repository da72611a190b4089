"""Key/value cache for N series x S sample paths that share each series' context.

The context ("prefix") of a series is the same for all of its S sample paths, so its keys and values
are computed once and kept once: [N, H, P, hd]. What the paths generate differs, so it lives in a
preallocated per-path "suffix": [N, H, S, C, hd]. Attention of a path's query runs over its series'
prefix and its own suffix in one softmax, which is exactly attention over the concatenated window.
"""

from __future__ import annotations

import math

import torch

from kronos_tasks.model.layers import Attend


class SharedPrefixKV:
    """Keys and values of one attention layer: a shared prefix per series and S suffixes per series."""

    def __init__(self, prefix_k: torch.Tensor, prefix_v: torch.Tensor, prefix_valid: torch.Tensor,
                 samples: int, capacity: int):
        n, heads, _, head_dim = prefix_k.shape
        self.samples = samples
        self.scale = 1.0 / math.sqrt(head_dim)
        self.prefix_k, self.prefix_v = prefix_k, prefix_v  # [N, H, P, hd]
        bias = torch.zeros(prefix_valid.shape, dtype=prefix_k.dtype, device=prefix_k.device)
        self.prefix_bias = bias.masked_fill_(~prefix_valid, float("-inf"))[:, None, None, None, :]  # [N,1,1,1,P]
        self.suffix_k = prefix_k.new_zeros(n, heads, samples, capacity, head_dim)  # [N, H, S, C, hd]
        self.suffix_v = torch.zeros_like(self.suffix_k)

    def _by_series(self, x: torch.Tensor) -> torch.Tensor:
        """[N*S, H, T, hd] -> [N, H, S, T, hd] (a view)."""
        rows, heads, length, head_dim = x.shape
        return x.view(rows // self.samples, self.samples, heads, length, head_dim).transpose(1, 2)

    def write(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Store keys and values [N*S, H, T, hd] of T new positions in suffix slots start .. start+T-1."""
        end = start + k.shape[2]
        self.suffix_k[:, :, :, start:end] = self._by_series(k)
        self.suffix_v[:, :, :, start:end] = self._by_series(v)

    def attend(self, q: torch.Tensor, end: int, causal_start: int | None = None) -> torch.Tensor:
        """Attention of queries [N*S, H, T, hd] over the prefix and suffix slots [0, end) -> [N*S, H, T, hd].

        With ``causal_start`` the T queries sit in slots causal_start .. causal_start+T-1 and each sees the
        suffix only up to its own slot; without it every query sees all ``end`` slots.
        """
        qs = self._by_series(q)  # [N, H, S, T, hd]
        n, heads, samples, length, head_dim = qs.shape
        prefix_len = self.prefix_k.shape[2]
        suffix_k, suffix_v = self.suffix_k[:, :, :, :end], self.suffix_v[:, :, :, :end]  # [N, H, S, end, hd]

        flat_q = qs.reshape(n, heads, samples * length, head_dim)
        scores_prefix = (flat_q @ self.prefix_k.transpose(-1, -2)).view(n, heads, samples, length, prefix_len)
        scores_suffix = qs @ suffix_k.transpose(-1, -2)  # [N, H, S, T, end]
        scores = torch.cat([scores_prefix, scores_suffix], dim=-1) * self.scale
        scores[..., :prefix_len] += self.prefix_bias
        if causal_start is not None and length > 1:
            slot = torch.arange(end, device=q.device)
            query_slot = causal_start + torch.arange(length, device=q.device)
            scores[..., prefix_len:].masked_fill_(slot[None, :] > query_slot[:, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)

        flat_probs = probs[..., :prefix_len].reshape(n, heads, samples * length, prefix_len)
        out = (flat_probs @ self.prefix_v).view(n, heads, samples, length, head_dim)
        out = out + probs[..., prefix_len:] @ suffix_v  # [N, H, S, T, hd]
        return out.transpose(1, 2).reshape(n * samples, heads, length, head_dim)

    def extend_attend(self, start: int) -> Attend:
        """An ``attend`` for T new positions at suffix slots start..: stores their keys, attends causally."""

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.write(k, v, start)
            return self.attend(q, start + k.shape[2], causal_start=start)

        return attend


def capture_attend(attend: Attend, store: list, index: int) -> Attend:
    """Wrap ``attend`` so that the keys and values it sees are kept in ``store[index]``."""

    def wrapped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        store[index] = (k, v)
        return attend(q, k, v)

    return wrapped
