"""Key/value cache for N series x S sample paths that share each series' context.

The context ("prefix") of a series is the same for all of its S sample paths, so its keys and values
are computed once and kept once: [N, H, P, hd]. What the paths generate differs, so it lives in a
preallocated per-path "suffix": [N, H, S, C, hd]. Attention of a path's query runs over its series'
prefix and its own suffix in one softmax, which is exactly attention over the concatenated window.

A cache is used in two moves, as an ``attend`` of the attention layer it belongs to (see
``kronos_tasks.model.layers.Attend``): ``prefill`` runs the context's causal self-attention and keeps
its keys and values as the prefix; ``extend`` stores the keys and values of new positions in the
suffix and attends over prefix and suffix. ``attend`` reads the cache without writing to it.
"""

from __future__ import annotations

import copy
import math

import torch

from kronos_tasks.model.layers import Attention, causal_attend

# Attention scores held at once when many queries attend together (about 16 MB in float32).
SCORES_PER_GROUP = 4_000_000


class SharedPrefixKV:
    """Keys and values of one attention layer: a shared prefix per series and S suffixes per series.

    All memory is allocated up front. Suffix slots are written before they are read, so they start
    uninitialised. ``set_prefix_valid`` says which prefix columns lie inside each series' window
    (left padding and slid-out tokens are outside); it applies to the next ``prefill`` and every
    attention after it.
    """

    def __init__(
        self,
        series: int,
        heads: int,
        prefix_len: int,
        head_dim: int,
        samples: int,
        capacity: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.samples = samples
        self.scale = 1.0 / math.sqrt(head_dim)
        # Keys are kept transposed, so the per-step products read both tensors in place.
        self.prefix_kt = torch.empty(series, heads, head_dim, prefix_len, dtype=dtype, device=device)  # [N, H, hd, P]
        self.prefix_v = torch.empty(series, heads, prefix_len, head_dim, dtype=dtype, device=device)  # [N, H, P, hd]
        shape = (series, heads, samples, capacity, head_dim)
        self.suffix_k = torch.empty(shape, dtype=dtype, device=device)  # [N, H, S, C, hd]
        self.suffix_v = torch.empty(shape, dtype=dtype, device=device)
        self.prefix_valid: torch.Tensor | None = None  # [N, P] True = inside the window; None: all columns
        self.prefix_bias: torch.Tensor | None = None  # [N, 1, 1, 1, P]: 0 inside the window, -inf outside

    @classmethod
    def for_layer(
        cls, attention: Attention, series: int, prefix_len: int, samples: int, capacity: int
    ) -> SharedPrefixKV:
        """A cache shaped for ``attention``'s heads, in the dtype and on the device of its weights."""
        weight = attention.q_proj.weight
        return cls(
            series,
            attention.n_heads,
            prefix_len,
            attention.head_dim,
            samples,
            capacity,
            dtype=weight.dtype,
            device=weight.device,
        )

    def set_prefix_valid(self, valid: torch.Tensor | None) -> None:
        """Mark the prefix columns inside each series' window (``valid`` [N, P]; None: all of them)."""
        self.prefix_valid = valid
        self.prefix_bias = None
        if valid is not None:
            bias = torch.zeros(valid.shape, dtype=self.prefix_v.dtype, device=valid.device)
            self.prefix_bias = bias.masked_fill_(~valid, float("-inf"))[:, None, None, None, :]

    def series(self, part: slice) -> SharedPrefixKV:
        """The cache of a contiguous range of series, sharing this cache's memory (writes go through)."""
        view = copy.copy(self)
        view.prefix_kt, view.prefix_v = self.prefix_kt[part], self.prefix_v[part]
        view.suffix_k, view.suffix_v = self.suffix_k[part], self.suffix_v[part]
        view.prefix_valid = None if self.prefix_valid is None else self.prefix_valid[part]
        view.prefix_bias = None if self.prefix_bias is None else self.prefix_bias[part]
        return view

    def set_prefix(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep keys and values [N, H, P, hd] of the series' contexts as the shared prefix."""
        self.prefix_kt.copy_(k.transpose(-1, -2))
        self.prefix_v.copy_(v)

    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal self-attention of the contexts [N, H, P, hd] inside their windows; keeps k and v as the prefix."""
        self.set_prefix(k, v)
        return causal_attend(self.prefix_valid)(q, k, v)

    def extend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
        """Store keys and values [N*S, H, T, hd] of T new positions at suffix slots start.., attend causally."""
        self.write(k, v, start)
        return self.attend(q, start + k.shape[2], causal_start=start)

    def clear_suffix(self) -> None:
        """Zero every suffix slot: attention over the whole capacity (``attend_through``) weighs the slots
        not yet written by exactly 0, which leaves them out only if they hold finite numbers."""
        self.suffix_k.zero_()
        self.suffix_v.zero_()

    def write_at(self, k: torch.Tensor, v: torch.Tensor, slot: torch.Tensor) -> None:
        """Store keys and values [N*S, H, 1, hd] of one position in the suffix slot ``slot`` (int64 [1])."""
        self.suffix_k.index_copy_(3, slot, self._by_series(k))
        self.suffix_v.index_copy_(3, slot, self._by_series(v))

    def extend_at(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """``extend`` for one position whose slot is a tensor: the same result, in tensors of one shape whatever
        the slot, so that a CUDA graph captured once replays every step."""
        self.write_at(k, v, slot)
        return self.attend_through(q, slot)

    def attend_through(self, q: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Attention of one query per path [N*S, H, 1, hd] over the prefix and suffix slots 0..slot.

        Spans the suffix's whole capacity with the later slots masked (they must be finite, see
        ``clear_suffix``), so no shape depends on ``slot`` (int64 [1]).
        """
        capacity = self.suffix_k.shape[3]
        later = torch.arange(capacity, device=slot.device) > slot
        bias = torch.zeros(capacity, dtype=q.dtype, device=q.device).masked_fill_(later, float("-inf"))
        return self._attend(q, capacity, None, suffix_bias=bias)

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

    def _attend(
        self, q: torch.Tensor, end: int, causal_start: int | None, suffix_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        qs = self._by_series(q) * self.scale  # [N, H, S, T, hd]
        n, heads, samples, length, head_dim = qs.shape
        prefix_len = self.prefix_v.shape[2]
        suffix_k, suffix_v = self.suffix_k[:, :, :, :end], self.suffix_v[:, :, :, :end]  # [N, H, S, end, hd]

        flat_q = qs.reshape(n, heads, samples * length, head_dim)
        scores_prefix = (flat_q @ self.prefix_kt).view(n, heads, samples, length, prefix_len)
        if self.prefix_bias is not None:
            scores_prefix = scores_prefix + self.prefix_bias
        scores_suffix = qs @ suffix_k.transpose(-1, -2)  # [N, H, S, T, end]
        if suffix_bias is not None:
            scores_suffix = scores_suffix + suffix_bias
        if causal_start is not None and length > 1:
            slot = torch.arange(end, device=q.device)
            query_slot = causal_start + torch.arange(length, device=q.device)
            scores_suffix = scores_suffix.masked_fill(slot[None, :] > query_slot[:, None], float("-inf"))
        probs = torch.softmax(torch.cat([scores_prefix, scores_suffix], dim=-1), dim=-1)

        flat_probs = probs[..., :prefix_len].reshape(n, heads, samples * length, prefix_len)
        out = (flat_probs @ self.prefix_v).view(n, heads, samples, length, head_dim)
        out = out + probs[..., prefix_len:] @ suffix_v  # [N, H, S, T, hd]
        return out.transpose(1, 2).reshape(n * samples, heads, length, head_dim)
