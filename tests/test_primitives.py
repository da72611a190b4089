"""The shared primitives against independent references written from their definitions (tests/reference.py),
at the boundaries where an off-by-one hides: the random stream, top-k ties, the top-p threshold exactly
reached, both clip bounds, flat columns and calendar features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import reference
from kronos_tasks.inference.features import normalise, time_features
from kronos_tasks.inference.sampling import filter_logits, stream_keys, uniforms


def test_every_draw_equals_the_reference_stream():
    seeds = [0, 1, 7, 2**31 - 1, 2**32 + 5, 2**62 + 12345, 4697838586550515533]
    keys = stream_keys(torch.tensor(seeds).repeat_interleave(3), torch.arange(3).repeat(len(seeds)))
    assert keys.tolist() == [reference.stream_key(s, r) for s in seeds for r in range(3)]
    draws = uniforms(keys, 4, torch.float64)
    want = [[[reference.uniform(k, step, stage) for stage in (0, 1)] for step in range(4)] for k in keys.tolist()]
    assert draws.tolist() == want  # exactly: every draw is a 24-bit value centred in its cell
    assert draws.min() >= 2**-25 and draws.max() <= 1 - 2**-25


def test_top_p_keeps_the_token_whose_preceding_mass_equals_top_p_exactly():
    logits = torch.zeros(1, 4)  # four tokens of probability 0.25: the running masses 0.25, 0.5, 0.75 are exact
    for top_p, kept in ((0.5, [0, 1, 2]), (0.25, [0, 1]), (0.74, [0, 1, 2]), (0.75, [0, 1, 2, 3])):
        filtered = filter_logits(logits, 0, top_p)
        got = torch.isfinite(filtered[0]).nonzero().flatten().tolist()
        assert got == kept == reference.nucleus([0.25] * 4, 0, top_p), top_p


def test_top_k_keeps_every_token_tied_with_the_kth_and_top_p_then_applies():
    logits = torch.tensor([[3.0, 2.0, 2.0, 1.0, 2.0]])
    probabilities = torch.softmax(logits, -1)[0].tolist()
    for top_k, top_p in ((2, 1.0), (1, 1.0), (4, 1.0), (2, 0.5), (3, 0.9)):
        got = torch.isfinite(filter_logits(logits, top_k, top_p)[0]).nonzero().flatten().tolist()
        assert got == reference.nucleus(probabilities, top_k, top_p), (top_k, top_p)
    assert torch.isfinite(filter_logits(logits, 2, 1.0)[0]).sum() == 4  # the three tied at 2.0 all stay


def test_normalisation_clips_at_both_bounds_and_keeps_flat_columns_finite():
    rng = np.random.default_rng(0)
    values = rng.normal(100, 1, (200, 6))
    values[50, 0], values[60, 1] = 1e4, -1e4  # one spike above, one below: both bounds bind
    values[:, 5] = 42.0  # a flat column
    got, _, _ = normalise(values, 5.0)
    want = np.array([reference.zscores(list(values[:, j]), 5.0) for j in range(6)]).T
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert got[50, 0] == 5.0 and got[60, 1] == -5.0 and (got[:, 5] == 0).all()
    assert got.max() == 5.0 and got.min() == -5.0


def test_time_features_are_the_wall_clock_calendar_fields():
    stamps = pd.Series(pd.to_datetime(["2024-02-29 23:59", "2024-03-04 09:30", "2025-12-31 00:05"]))
    assert time_features(stamps).tolist() == [reference.calendar_features(s) for s in stamps]
