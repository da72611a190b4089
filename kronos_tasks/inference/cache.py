"""Key/value cache for N series x S sample paths that share each series' context.

The context ("prefix") of a series is the same for all of its S sample paths, so its keys and values
are computed once and kept once: [N, H, P, hd]. What the paths generate differs, so it lives in a
preallocated per-path "suffix": [N, H, S, C, hd]. Attention of a path's query runs over its series'
prefix and its own suffix in one softmax, which is exactly attention over the concatenated window.
"""

from __future__ import annotations

import copy
import math

import torch

from kronos_tasks.model.layers import Attend

# Attention scores held at once when many queries attend together (about 16 MB in float32).
SCORES_PER_GROUP = 4_000_000


class SharedPrefixKV:
    """Keys and values of one attention layer: a shared prefix per series and S suffixes per series.

    ``prefix_valid`` [N, P] marks the prefix positions inside the window (None: all of them). Suffix
    slots are written before they are read, so they start uninitialised; ``reuse`` hands over the suffix
    buffers of a cache this one replaces (same shapes), which avoids touching fresh memory again.
    """

    def __init__(
        self,
        prefix_k: torch.Tensor,
        prefix_v: torch.Tensor,
        prefix_valid: torch.Tensor | None,
        samples: int,
        capacity: int,
        reuse: SharedPrefixKV | None = None,
    ):
        n, heads, _, head_dim = prefix_k.shape
        self.samples = samples
        self.scale = 1.0 / math.sqrt(head_dim)
        # Keys transposed and both contiguous: the per-step products then read them in place (the
        # projections come out as head-split views).
        self.prefix_kt = prefix_k.transpose(-1, -2).contiguous()  # [N, H, hd, P]
        self.prefix_v = prefix_v.contiguous()  # [N, H, P, hd]
        self.prefix_bias = None
        if prefix_valid is not None:
            bias = torch.zeros(prefix_valid.shape, dtype=prefix_k.dtype, device=prefix_k.device)
            self.prefix_bias = bias.masked_fill_(~prefix_valid, float("-inf"))[:, None, None, None, :]
        shape = (n, heads, samples, capacity, head_dim)
        if reuse is not None and reuse.suffix_k.shape == shape and reuse.suffix_k.dtype == prefix_k.dtype:
            self.suffix_k, self.suffix_v = reuse.suffix_k, reuse.suffix_v
        else:
            self.suffix_k = prefix_k.new_empty(shape)  # [N, H, S, C, hd]
            self.suffix_v = prefix_k.new_empty(shape)

    def series(self, part: slice) -> SharedPrefixKV:
        """The cache of a contiguous range of series, sharing this cache's memory."""
        view = copy.copy(self)
        view.prefix_kt, view.prefix_v = self.prefix_kt[part], self.prefix_v[part]
        view.suffix_k, view.suffix_v = self.suffix_k[part], self.suffix_v[part]
        view.prefix_bias = None if self.prefix_bias is None else self.prefix_bias[part]
        return view

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
        suffix only up to its own slot; without it every query sees all ``end`` slots. Many queries are
        processed in groups so that their scores stay small (the result is the same per query).
        """
        rows, heads, length, _ = q.shape
        per_query = rows * heads * (self.prefix_v.shape[2] + end)
        group = max(1, SCORES_PER_GROUP // per_query)
        if length <= group:
            return self._attend(q, end, causal_start)
        parts = []
        for first in range(0, length, group):
            last = min(length, first + group)
            shifted = None if causal_start is None else causal_start + first
            parts.append(self._attend(q[:, :, first:last], end if shifted is None else shifted + last - first, shifted))
        return torch.cat(parts, dim=2)

    def _attend(self, q: torch.Tensor, end: int, causal_start: int | None) -> torch.Tensor:
        qs = self._by_series(q) * self.scale  # [N, H, S, T, hd]
        n, heads, samples, length, head_dim = qs.shape
        prefix_len = self.prefix_v.shape[2]
        suffix_k, suffix_v = self.suffix_k[:, :, :, :end], self.suffix_v[:, :, :, :end]  # [N, H, S, end, hd]

        flat_q = qs.reshape(n, heads, samples * length, head_dim)
        scores_prefix = (flat_q @ self.prefix_kt).view(n, heads, samples, length, prefix_len)
        if self.prefix_bias is not None:
            scores_prefix = scores_prefix + self.prefix_bias
        scores_suffix = qs @ suffix_k.transpose(-1, -2)  # [N, H, S, T, end]
        if causal_start is not None and length > 1:
            slot = torch.arange(end, device=q.device)
            query_slot = causal_start + torch.arange(length, device=q.device)
            scores_suffix = scores_suffix.masked_fill(slot[None, :] > query_slot[:, None], float("-inf"))
        probs = torch.softmax(torch.cat([scores_prefix, scores_suffix], dim=-1), dim=-1)

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
