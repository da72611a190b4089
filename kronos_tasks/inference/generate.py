"""Kronos's two-stage autoregressive generation over a batch of series, each with S sample paths.

Window semantics are upstream's: at step i the model sees the last ``max_context`` tokens of
(history + the i tokens generated so far), with positions renumbered from 0; the forecast is decoded
from the last ``max_context`` tokens of (history + all generated tokens).

Two paths produce the same tokens from the same weights and seeds:

* ``"cached"`` (default): the context of each series is encoded and prefilled once and shared by its
  S paths; each step then feeds one token per path against the key/value cache. When the window
  slides (the sequence would exceed ``max_context``), dropping the oldest token changes every later
  hidden state, so the cache is rebuilt for that step: the context once per series, the generated
  tokens per path. A sliding step therefore costs about what a full-recompute step costs.
* ``"full"``: every step recomputes the whole window of every path, as upstream does.

Series of different lengths share a batch through left padding; rows' positions count from their own
first token, so each series gets what it would get alone.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch

from kronos_tasks.model import Kronos, KronosTokenizer
from kronos_tasks.model.layers import positions_from_mask

from .cache import SharedPrefixKV
from .sampling import SamplingParams, sample_from_logits, sampling_dtype, stream_keys, uniforms

log = logging.getLogger(__name__)

DECODING_METHODS = ("cached", "full")

# Token rows that the passes over many tokens at once (prefill, window rebuild, tokenizer passes) take
# together. It bounds their working set: tensors much larger than this come from fresh memory on every
# call, and first-touch page faults then cost more than the arithmetic (bench/RESULTS.md).
ROWS_PER_PASS = 2048


def series_groups(count: int, rows_per_series: int) -> list[slice]:
    """Consecutive ranges of ``count`` series whose token rows fit ``ROWS_PER_PASS`` together."""
    size = max(1, ROWS_PER_PASS // max(1, rows_per_series))
    return [slice(start, min(count, start + size)) for start in range(0, count, size)]


@dataclass
class TokenizedBatch:
    """N series after tokenization, left-padded: the last ``kept[n]`` of P columns of row n are real."""

    s1: torch.Tensor  # [N, P] int64
    s2: torch.Tensor  # [N, P] int64
    stamps: torch.Tensor  # [N, P, 5] time features of the history
    future_stamps: torch.Tensor  # [N, pred_len, 5] time features of the bars to forecast
    kept: list[int]  # history tokens per series inside the window, min(length, max_context)
    max_context: int

    @property
    def pred_len(self) -> int:
        return self.future_stamps.shape[1]

    def visible(self, generated: int) -> list[int]:
        """History tokens per series in the window once ``generated`` tokens follow them."""
        return [min(kept, self.max_context - generated) for kept in self.kept]

    def valid_columns(self, visible: list[int]) -> torch.Tensor:
        """[N, P] mask of the history columns inside the window."""
        width = self.s1.shape[1]
        need = torch.tensor([width - v for v in visible], device=self.s1.device)
        return torch.arange(width, device=self.s1.device)[None, :] >= need[:, None]


def _left_pad(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    out = rows[0].new_zeros((len(rows), width) + tuple(rows[0].shape[1:]))
    for i, row in enumerate(rows):
        out[i, width - row.shape[0] :] = row
    return out


def _padding(lengths: list[int], width: int, device: torch.device) -> torch.Tensor | None:
    """[N, width] left-padding mask (True = padded), or None when no row is padded."""
    if min(lengths) == width:
        return None
    starts = torch.tensor([width - n for n in lengths], device=device)
    return torch.arange(width, device=device)[None, :] < starts[:, None]


@torch.inference_mode()
def tokenize(
    tokenizer: KronosTokenizer,
    bars: list[torch.Tensor],
    stamps: list[torch.Tensor],
    future_stamps: list[torch.Tensor],
    max_context: int,
) -> TokenizedBatch:
    """Encode each series' whole history (normalised bars [L_n, 6], time features [L_n, 5]).

    The tokenizer sees the whole history, as upstream's does; the window keeps its last ``max_context`` tokens.
    """
    lengths = [len(b) for b in bars]
    longest = max(lengths)
    x = _left_pad(bars, longest)  # [N, L, 6]
    ids = []
    for part in series_groups(len(bars), longest):
        ids.append(tokenizer.encode(x[part], padding_mask=_padding(lengths[part], longest, x.device)))
    width = min(longest, max_context)
    return TokenizedBatch(
        s1=torch.cat([s1 for s1, _ in ids])[:, -width:],
        s2=torch.cat([s2 for _, s2 in ids])[:, -width:],
        stamps=_left_pad(stamps, longest)[:, -width:],
        future_stamps=torch.stack(future_stamps),
        kept=[min(n, max_context) for n in lengths],
        max_context=max_context,
    )


def _stream_keys(seeds: torch.Tensor, samples: int) -> torch.Tensor:
    """Random-stream keys of the N*S rows, series-major: row n*S + r is sample r of series n."""
    sample_index = torch.arange(samples, device=seeds.device).repeat(len(seeds))
    return stream_keys(seeds.repeat_interleave(samples), sample_index)


@dataclass
class _Generated:
    s1: torch.Tensor  # [N*S, pred_len]
    s2: torch.Tensor  # [N*S, pred_len]
    stamps: torch.Tensor  # [N*S, pred_len, 5] time features of the generated bars


class S2Input(NamedTuple):
    """What the s2 logits of a step read besides its s1: the contexts the step's s1 logits came from."""

    context: torch.Tensor  # [N*S, L, D]: the whole window (full recompute) or its last position (cached)
    padding: torch.Tensor | None = None  # [N*S, L] True = padded, for the full window only


class _CachedSteps:
    """Cached decoding: prefill the context once per series, then one token per path and step.

    One cache per Transformer block and one for the dependency layer (its keys and values are
    projections of the contexts), allocated once with room for every generated token.
    """

    def __init__(self, model: Kronos, batch: TokenizedBatch, samples: int, generated: _Generated):
        self.model, self.batch, self.samples, self.generated = model, batch, samples, generated
        series, width = batch.s1.shape
        self.layers = [
            SharedPrefixKV.for_layer(attention, series, width, samples, batch.pred_len)
            for attention in [block.self_attn for block in model.transformer] + [model.dep_layer.cross_attn]
        ]
        self.visible: list[int] = []

    def s1_logits(self, step: int) -> tuple[torch.Tensor, S2Input]:
        """s1 logits [N*S, V1] for the token at ``step``, from the tokens generated before it."""
        g = self.generated
        if step == 0:
            return self._prefill(self.batch.visible(0))
        if self.batch.visible(step) != self.visible:  # the window slid: rebuild the cache
            self._prefill(self.batch.visible(step))
            return self._extend(g.s1[:, :step], g.s2[:, :step], g.stamps[:, :step], start=0)
        last = slice(step - 1, step)
        return self._extend(g.s1[:, last], g.s2[:, last], g.stamps[:, last], start=step - 1)

    def s2_logits(self, state: S2Input, s1: torch.Tensor, step: int) -> torch.Tensor:
        """s2 logits [N*S, V2] for the token at ``step`` given its sampled s1 [N*S]."""
        attended = self.layers[-1].attend(self.model.s2_query(s1[:, None]), end=step)
        return self.model.s2_logits(state.context, attended)[:, -1]

    def slot_s1_logits(self, slot: torch.Tensor) -> tuple[torch.Tensor, S2Input]:
        """``s1_logits`` of the step after the token in cache slot ``slot`` (int64 [1]), in tensors whose
        shapes do not depend on the step. Only for windows that do not slide (see ``never_slides``)."""
        model, g = self.model, self.generated
        s1, s2, stamps = g.s1.index_select(1, slot), g.s2.index_select(1, slot), g.stamps.index_select(1, slot)
        attends = [functools.partial(layer.extend_at, slot=slot) for layer in self.layers[:-1]]
        context = model.context(model.embed(s1, s2, stamps), model.rope(self.visible_rows + slot), attends)
        self.layers[-1].write_at(*model.dep_layer.keys_values(context), slot)  # context: [N*S, 1, D]
        return model.head(context[:, -1]), S2Input(context)

    def slot_s2_logits(self, state: S2Input, s1: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """``s2_logits`` of the step after the token in cache slot ``slot``, given its sampled s1 [N*S]."""
        attended = self.layers[-1].attend_through(self.model.s2_query(s1[:, None]), slot)
        return self.model.s2_logits(state.context, attended)[:, -1]

    def _prefill(self, visible: list[int]) -> tuple[torch.Tensor, S2Input]:
        """Run the history window of every series once, filling the caches' prefixes."""
        model, batch, samples = self.model, self.batch, self.samples
        self.visible = visible
        width = batch.s1.shape[1]
        valid = batch.valid_columns(visible)
        for layer in self.layers:
            layer.set_prefix_valid(None if min(visible) == width else valid)
        last = []
        for part in series_groups(len(visible), width):
            rope = model.rope(positions_from_mask(valid[part], len(valid[part]), width, valid.device))
            layers = [layer.series(part) for layer in self.layers]
            x = model.embed(batch.s1[part], batch.s2[part], batch.stamps[part])
            context = model.context(x, rope, [layer.prefill for layer in layers[:-1]])  # [n, P, D]
            layers[-1].set_prefix(*model.dep_layer.keys_values(context))
            last.append(context[:, -1])
        last_context = torch.cat(last)  # [N, D]
        self.visible_rows = torch.tensor(visible, device=valid.device).repeat_interleave(samples)[:, None]
        logits = model.head(last_context).repeat_interleave(samples, dim=0)  # [N*S, V1]
        return logits, S2Input(last_context.repeat_interleave(samples, dim=0)[:, None])  # [N*S, 1, D]

    def _extend(
        self, s1: torch.Tensor, s2: torch.Tensor, stamps: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, S2Input]:
        """Feed generated tokens [N*S, T] at cache slots start..start+T-1."""
        model, samples = self.model, self.samples
        length = s1.shape[1]
        positions = self.visible_rows + start + torch.arange(length, device=s1.device)  # [N*S, T]
        last, logits = [], []
        groups = series_groups(len(self.visible), samples * length)
        for part in groups:
            rows = slice(part.start * samples, part.stop * samples)
            layers = [layer.series(part) for layer in self.layers] if len(groups) > 1 else self.layers
            attends = [functools.partial(layer.extend, start=start) for layer in layers[:-1]]
            x = model.embed(s1[rows], s2[rows], stamps[rows])
            context = model.context(x, model.rope(positions[rows]), attends)  # [rows, T, D]
            layers[-1].write(*model.dep_layer.keys_values(context), start)
            last.append(context[:, -1:])
            logits.append(model.head(context[:, -1]))
        if len(groups) == 1:
            return logits[0], S2Input(last[0])
        return torch.cat(logits), S2Input(torch.cat(last))


class _FullSteps:
    """Full recompute: every step runs the whole window of every path through the model."""

    def __init__(self, model: Kronos, batch: TokenizedBatch, samples: int, generated: _Generated):
        self.model, self.batch, self.samples, self.generated = model, batch, samples, generated

    def s1_logits(self, step: int) -> tuple[torch.Tensor, S2Input]:
        batch, samples, g = self.batch, self.samples, self.generated
        visible = batch.visible(step)
        start = batch.s1.shape[1] - max(visible)

        def window(history: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
            return torch.cat([history[:, start:].repeat_interleave(samples, 0), generated[:, :step]], dim=1)

        padding = None
        if min(visible) != max(visible):
            valid = batch.valid_columns(visible)[:, start:].repeat_interleave(samples, 0)
            padding = ~torch.cat([valid, valid.new_ones(valid.shape[0], step)], dim=1)
        logits, context = self.model.decode_s1(
            window(batch.s1, g.s1), window(batch.s2, g.s2), window(batch.stamps, g.stamps), padding
        )
        return logits[:, -1], S2Input(context, padding)

    def s2_logits(self, state: S2Input, s1: torch.Tensor, step: int) -> torch.Tensor:
        return self.model.decode_s2(state.context, s1[:, None], state.padding)[:, -1]


_STEPPERS = {"cached": _CachedSteps, "full": _FullSteps}


# Above this many path-steps (rows x pred_len) the static-shape step, whose attention spans the cache's
# whole capacity, reads more than launching the plain steps' kernels costs. On an H200 (bench/RESULTS.md):
# faster at 98,304 (4,096 rows x 24 steps: 2.38 s against 2.60-2.72 s) and 1.1-5.4x faster per step up to
# 32,768; 0.8-0.9x at 262,144 (2,048 rows x 128 steps).
GRAPH_PATH_STEPS = 131_072


def never_slides(batch: TokenizedBatch) -> bool:
    """Whether every step of ``batch`` sees the same history tokens (no series' window slides)."""
    return max(batch.kept) + batch.pred_len - 1 <= batch.max_context


def use_slots(slots: bool | None, method: str, batch: TokenizedBatch, samples: int) -> bool:
    """Whether ``generate_tokens`` runs the static-shape step: as asked, or by default on CUDA up to
    ``GRAPH_PATH_STEPS``; never for the full-recompute method or a window that slides."""
    if slots is None:
        rows = len(batch.kept) * samples
        slots = batch.s1.device.type == "cuda" and rows * batch.pred_len <= GRAPH_PATH_STEPS
    return slots and method == "cached" and never_slides(batch)


def _slot_steps(steps: _CachedSteps, params: SamplingParams, draws: torch.Tensor, capture: bool) -> None:
    """Steps 1 .. pred_len-1 of a cached decode as one static-shape step, replayed as a CUDA graph when
    ``capture`` (one capture, then no host work per step), run eagerly otherwise."""
    g = steps.generated
    slot = torch.zeros(1, dtype=torch.int64, device=draws.device)  # the cache slot of the token fed in
    for layer in steps.layers:
        layer.clear_suffix()

    def step() -> None:
        s1_logits, s2_input = steps.slot_s1_logits(slot)
        u = draws.index_select(1, slot + 1)[:, 0]  # [N*S, 2]
        s1 = sample_from_logits(s1_logits, params, u[:, 0])
        s2 = sample_from_logits(steps.slot_s2_logits(s2_input, s1, slot), params, u[:, 1])
        g.s1.index_copy_(1, slot + 1, s1[:, None])
        g.s2.index_copy_(1, slot + 1, s2[:, None])
        slot.add_(1)

    remaining = g.s1.shape[1] - 1
    if not capture:
        for _ in range(remaining):
            step()
        return
    # The first of these steps runs for real on a side stream: it loads kernels and library handles
    # before the capture, as CUDA graphs require.
    side = torch.cuda.Stream(draws.device)
    side.wait_stream(torch.cuda.current_stream(draws.device))
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream(draws.device).wait_stream(side)
    if remaining == 1:
        return
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
    except RuntimeError as error:  # a capture runs nothing, so the remaining steps can still run one by one
        log.warning("CUDA graph capture failed, decoding step by step instead: %s", error)
        for _ in range(remaining - 1):
            step()
        return
    for _ in range(remaining - 1):
        graph.replay()


@torch.inference_mode()
def generate_tokens(
    model: Kronos,
    batch: TokenizedBatch,
    samples: int,
    params: SamplingParams,
    seeds: torch.Tensor,
    method: str = "cached",
    slots: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``samples`` token paths per series -> (s1, s2), each [N*S, pred_len], series-major rows.

    ``seeds`` [N] int64 gives each series its random stream: a series' paths do not depend on the other
    series in the batch, and the first k paths are the same whatever ``samples`` is.

    ``slots`` runs the cached steps after the first as one static-shape step (``_slot_steps``), captured
    and replayed as a CUDA graph on a GPU; it computes what the plain cached steps compute, up to float
    rounding. ``None`` (default) chooses it on CUDA for batches up to ``GRAPH_PATH_STEPS`` (see
    ``use_slots``); sliding windows always take the plain steps.
    """
    if method not in _STEPPERS:
        raise ValueError(f"method must be one of {DECODING_METHODS}, got {method!r}.")
    slots = use_slots(slots, method, batch, samples)
    rows = len(batch.kept) * samples
    keys = _stream_keys(seeds, samples)
    generated = _Generated(
        s1=batch.s1.new_empty(rows, batch.pred_len),
        s2=batch.s2.new_empty(rows, batch.pred_len),
        stamps=batch.future_stamps.repeat_interleave(samples, dim=0),
    )
    draws = uniforms(keys, batch.pred_len, sampling_dtype(model.dtype))  # [N*S, pred_len, 2]
    steps = _STEPPERS[method](model, batch, samples, generated)
    for i in range(1 if slots else batch.pred_len):
        s1_logits, s2_input = steps.s1_logits(i)
        s1 = sample_from_logits(s1_logits, params, draws[:, i, 0])
        generated.s2[:, i] = sample_from_logits(steps.s2_logits(s2_input, s1, i), params, draws[:, i, 1])
        generated.s1[:, i] = s1
    if slots and batch.pred_len > 1:
        _slot_steps(steps, params, draws, capture=batch.s1.device.type == "cuda")
    return generated.s1, generated.s2


@torch.inference_mode()
def decode_tokens(
    tokenizer: KronosTokenizer,
    batch: TokenizedBatch,
    s1: torch.Tensor,
    s2: torch.Tensor,
    samples: int,
    method: str = "cached",
) -> torch.Tensor:
    """Generated tokens [N*S, pred_len] -> normalised bars [N*S, pred_len, 6].

    Each path is decoded from the last ``max_context`` tokens of its history and generated tokens. The
    cached method decodes the history part once per series and shares it with the series' paths.
    """
    pred_len = batch.pred_len
    visible = batch.visible(pred_len)
    start = batch.s1.shape[1] - max(visible)
    valid = batch.valid_columns(visible)[:, start:]  # [N, Pv]
    padded = None if min(visible) == max(visible) else valid
    hist_s1, hist_s2 = batch.s1[:, start:], batch.s2[:, start:]

    if method == "full":
        rows_valid = valid.repeat_interleave(samples, 0)
        padding = ~torch.cat([rows_valid, rows_valid.new_ones(rows_valid.shape[0], pred_len)], dim=1)
        window = (
            torch.cat([hist_s1.repeat_interleave(samples, 0), s1], dim=1),
            torch.cat([hist_s2.repeat_interleave(samples, 0), s2], dim=1),
        )
        bars = tokenizer.decode(window, padding_mask=None if padded is None else padding)
        return bars[:, -pred_len:]

    quantizer = tokenizer.tokenizer
    positions = torch.tensor(visible, device=s1.device)[:, None] + torch.arange(pred_len, device=s1.device)
    out = []
    for part in series_groups(len(visible), valid.shape[1] + samples * pred_len):
        rows = slice(part.start * samples, part.stop * samples)
        count = part.stop - part.start
        caches = [
            SharedPrefixKV.for_layer(block.self_attn, count, valid.shape[1], samples, pred_len)
            for block in tokenizer.decoder
        ]
        for cache in caches:
            cache.set_prefix_valid(None if padded is None else padded[part])
        # The history part once per series (empty when pred_len == max_context) ...
        rope = tokenizer.rope(positions_from_mask(valid[part], count, valid.shape[1], valid.device))
        codes = quantizer.ids_to_codes(hist_s1[part], hist_s2[part], tokenizer.dtype)  # [n, Pv, bits]
        tokenizer.decode_hidden(codes, rope, [cache.prefill for cache in caches])
        # ... then each path's generated tokens against it.
        codes = quantizer.ids_to_codes(s1[rows], s2[rows], tokenizer.dtype)  # [n*S, pred_len, bits]
        rope = tokenizer.rope(positions[part].repeat_interleave(samples, dim=0))
        out.append(tokenizer.decode_hidden(codes, rope, [functools.partial(c.extend, start=0) for c in caches]))
    return torch.cat(out) if len(out) > 1 else out[0]
