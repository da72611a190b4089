"""The shared primitives against independent references written from their definitions (tests/reference.py),
at the boundaries where an off-by-one hides: the random stream, top-k ties, the top-p threshold exactly
reached, both clip bounds, flat columns, calendar features and the audit hashes' byte layout."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pandas as pd
import pytest
import torch

import reference
from kronos_tasks.data import FEATURES
from kronos_tasks.hashing import combine, frame_sha256, sha256_file, window_sha256
from kronos_tasks.inference.features import normalise, time_features
from kronos_tasks.inference.sampling import SamplingParams, filter_logits, sample_from_logits, stream_keys, uniforms


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


def test_filtering_acts_on_the_last_dimension_of_batched_logits():
    # [batch, steps, vocab] with fewer steps than top_k: the vocabulary is the last dimension, always
    logits = torch.randn(3, 2, 16, generator=torch.Generator().manual_seed(1))
    for top_k, top_p in ((4, 1.0), (0, 0.6), (5, 0.7)):
        batched = filter_logits(logits, top_k, top_p)
        rows = torch.stack([filter_logits(row, top_k, top_p) for row in logits.reshape(6, 1, 16)])
        assert torch.equal(batched, rows.reshape(3, 2, 16)), (top_k, top_p)
        probabilities = torch.softmax(logits.reshape(6, 16), -1).tolist()
        assert [torch.isfinite(r).nonzero().flatten().tolist() for r in batched.reshape(6, 16)] == [
            reference.nucleus(p, top_k, top_p) for p in probabilities
        ]


def test_top_p_breaks_ties_by_token_index():
    # 4,000 equal logits: which half stays is decided by the tie rule alone (the lowest indices first)
    flat = torch.zeros(1, 4000)
    kept = torch.isfinite(filter_logits(flat, 0, 0.5)[0]).nonzero().flatten()
    assert 1999 <= len(kept) <= 2002
    assert torch.equal(kept, torch.arange(len(kept)))


def test_a_row_of_non_finite_logits_draws_a_token_in_range_and_leaves_the_others_alone():
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    u = torch.tensor([0.3, 0.5, 0.9])
    clean = sample_from_logits(logits, SamplingParams(T=1.0, top_k=0, top_p=1.0), u)
    logits[1] = float("nan")
    tokens = sample_from_logits(logits, SamplingParams(T=1.0, top_k=0, top_p=1.0), u)
    assert 0 <= tokens[1] < 8  # an index the embedding can take; the forecast's non-finite check names it
    assert tokens[0] == clean[0] and tokens[2] == clean[2]


def test_sampling_inverts_the_cdf_in_the_logits_precision():
    logits = torch.randn(64, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    u = uniforms(stream_keys(torch.arange(64), torch.zeros(64, dtype=torch.int64)), 1, torch.float32)[:, 0, 0]
    tokens = sample_from_logits(logits, SamplingParams(T=0.8, top_k=0, top_p=1.0), u)
    for row, draw, token in zip(torch.softmax(logits / 0.8, -1).tolist(), u.tolist(), tokens.tolist()):
        assert token == reference.inverse_cdf(row, draw)


def test_the_largest_draw_never_picks_a_filtered_token():
    # float32 sums of probabilities fall short of 1; the draw is scaled by the total so the last kept
    # token, not the filtered tail, takes the top of the range
    logits = torch.randn(2048, 64, generator=torch.Generator().manual_seed(4))
    logits[:, -8:] = -30.0  # the tail that top-k removes
    top = torch.full((2048,), 1 - 2**-25)
    tokens = sample_from_logits(logits, SamplingParams(T=1.0, top_k=56, top_p=1.0), top)
    assert (tokens < 56).all()


def test_content_hashes_follow_their_documented_layout(tmp_path):
    payload = bytes(range(256)) * 5000  # 1.28 MB: more than one read chunk
    (tmp_path / "weights.bin").write_bytes(payload)
    assert sha256_file(tmp_path / "weights.bin", chunk=1000) == hashlib.sha256(payload).hexdigest()
    frame = pd.DataFrame(
        {
            "timestamps": pd.to_datetime(["2024-01-02 15:00", "2024-01-03 15:00"]).tz_localize("America/New_York"),
            "close": np.array([1.5, 2.25], dtype=np.float32),
        }
    )
    want = hashlib.sha256(
        b"timestamps"
        + struct.pack("<2q", *[int(t.value) for t in frame["timestamps"].dt.tz_convert("UTC")])
        + b"close"
        + struct.pack("<2d", 1.5, 2.25)
    ).hexdigest()
    assert frame_sha256(frame, ["timestamps", "close"]) == want
    # the same digest from the arrays a forecast window is cut from: times in microseconds, integer volumes
    bars = pd.DataFrame({"ts": pd.DatetimeIndex(frame["timestamps"]).as_unit("us")})
    for n, feature in enumerate(FEATURES):
        bars[feature] = np.arange(2, dtype=np.int64) + n if feature == "volume" else frame["close"] + n
    values = np.stack([bars[f].to_numpy(np.float64) for f in FEATURES])
    assert window_sha256(pd.DatetimeIndex(bars["ts"]), values) == frame_sha256(bars, ["ts", *FEATURES])
    assert window_sha256(pd.DatetimeIndex(bars["ts"]), values[::-1]) != frame_sha256(bars, ["ts", *FEATURES])
    assert combine({"b": "2", "a": "1"}) == hashlib.sha256(b"a=1\nb=2\n").hexdigest()


def test_normalisation_falls_back_to_float64_where_float32_overflows():
    rng = np.random.default_rng(6)
    values = rng.normal(1.0, 0.1, (50, 6))
    values[:, 4] *= 3e37  # volumes whose squares pass float32's range
    values[:, 0] += 2.0
    values[10, 4] = 3e39  # a spike beyond float32 altogether: clipped at the upper bound
    values[20, 4] = -3e39  # and one below: the lower bound
    got, mean, std = normalise(values, 3.0)
    want = np.array([reference.zscores(list(values[:, j]), 3.0) for j in range(6)]).T
    assert got.dtype == np.float32 and mean.dtype == np.float64 and std.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, values.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, values.std(axis=0), rtol=1e-12)
    assert got[10, 4] == 3.0 and got[20, 4] == -3.0


def test_model_inputs_name_what_is_wrong_and_where():
    from kronos_tasks.inference import InputError
    from kronos_tasks.inference.features import as_timestamps, complete_features

    with pytest.raises(InputError, match=r"^x: expected a pandas DataFrame, got list\.$"):
        complete_features([1, 2], "x")
    frame = pd.DataFrame({"open": [1, 2, 3], "high": [2, 3, 4], "low": [1, 1, 2], "close": [1, "n/a", 3]})
    with pytest.raises(
        InputError,
        match=r"x: column 'close' has 1 missing, non-numeric or infinite value\(s\), "
        r"first at row 1 \(index 1\); drop or repair those bars\.",
    ):
        complete_features(frame, "x")
    frame.loc[1, "close"] = 2
    complete = complete_features(frame.astype({"close": int}), "x")
    assert (complete.dtypes == np.float64).all() and complete["volume"].tolist() == [0.0] * 3

    with pytest.raises(InputError, match=r"^x_ts: cannot read the values as timestamps: "):
        as_timestamps(["2024-01-02", "not a date"], "x_ts")
    with pytest.raises(InputError, match=r"^x_ts: timestamp missing at row 1\.$"):
        as_timestamps(["2024-01-02", None, None], "x_ts")
    nanosecond = as_timestamps([pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-02") + pd.Timedelta(1)], "x_ts")
    assert len(nanosecond) == 2  # strictly increasing, however close
    with pytest.raises(InputError, match=r"row 2 \(2024-01-02 00:00:00\) goes back from row 1 \(2024-01-03 00:00:00\)"):
        as_timestamps(["2024-01-01", "2024-01-03", "2024-01-02"], "x_ts")
    with pytest.raises(InputError, match=r"row 2 \(2024-01-03 00:00:00\) duplicates row 1 \(2024-01-03 00:00:00\)"):
        as_timestamps(["2024-01-01", "2024-01-03", "2024-01-03"], "x_ts")
