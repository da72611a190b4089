"""Token filters, the counter-based random stream and inverse-CDF sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import reference
from kronos_tasks.inference.sampling import (
    SamplingParams,
    filter_logits,
    mix32,
    sample_from_logits,
    stream_keys,
    uniforms,
)


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits).nonzero().flatten().tolist()


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    assert kept(filter_logits(logits, top_k=2, top_p=1.0)[0]) == [1, 3]
    assert kept(filter_logits(logits, top_k=0, top_p=1.0)[0]) == [0, 1, 2, 3, 4]


def test_top_p_keeps_the_token_that_crosses_the_threshold():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    # Masses before each token: 0, 0.5, 0.8, 0.95. Tokens whose preceding mass is <= top_p stay.
    assert kept(filter_logits(logits, 0, 0.6)[0]) == [0, 1]
    assert kept(filter_logits(logits, 0, 0.4)[0]) == [0]
    assert kept(filter_logits(logits, 0, 0.85)[0]) == [0, 1, 2]
    assert kept(filter_logits(logits, 0, 0.01)[0]) == [0]  # the most likely token always stays


def test_top_k_and_top_p_both_apply():
    # Upstream applies only top-k when both are set; here top-p then trims the top-k distribution.
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    logits = probs.log()
    # Top-3 renormalised: 0.444, 0.333, 0.222; masses before: 0, 0.444, 0.778 -> top_p 0.5 keeps two.
    assert kept(filter_logits(logits, 3, 0.5)[0]) == [0, 1]
    assert kept(filter_logits(logits, 3, 1.0)[0]) == [0, 1, 2]


def test_temperature_sharpens_before_filtering():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).log_softmax(-1)
    u = torch.tensor([0.9])
    # At T=1 a draw at 0.9 lands past the first token; at T=0.05 the first token holds ~all the mass.
    assert sample_from_logits(logits, SamplingParams(T=1.0, top_p=1.0), u).item() != 0
    assert sample_from_logits(logits, SamplingParams(T=0.05, top_p=1.0), u).item() == 0


def test_mix32_is_lowbias32_without_int64_overflow():
    values = [0, 1, 2, 12345, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF]
    got = mix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [reference.lowbias32(v) for v in values]


def test_uniforms_are_uniform_and_independent_of_the_batch():
    keys = stream_keys(torch.arange(20000, dtype=torch.int64) * 7919, torch.zeros(20000, dtype=torch.int64))
    u = uniforms(keys, 5, torch.float64)[:, 3, 1].numpy()
    assert (u > 0).all() and (u <= 1).all()
    counts, _ = np.histogram(u, bins=20, range=(0, 1))
    chi2 = ((counts - 1000) ** 2 / 1000).sum()
    assert chi2 < 45  # 19 degrees of freedom: p < 0.001 above ~43.8
    # The draw of a row depends on its key only, not on the other rows.
    alone = uniforms(keys[123:124], 5, torch.float64)[0, 3, 1]
    assert alone.item() == u[123]
    # A draw does not depend on how many steps are drawn, and differs between steps and stages.
    assert torch.equal(uniforms(keys[:5], 4, torch.float64), uniforms(keys[:5], 9, torch.float64)[:, :4])
    few = uniforms(keys[:5], 5, torch.float64)
    assert few[:, 3, 0].tolist() != few[:, 3, 1].tolist() and few[:, 3, 0].tolist() != few[:, 4, 0].tolist()


def test_sample_frequencies_follow_the_filtered_distribution():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    rows = 40000
    logits = probs.log().expand(rows, 4)
    keys = stream_keys(torch.full((rows,), 42, dtype=torch.int64), torch.arange(rows))
    draws = sample_from_logits(
        logits, SamplingParams(T=1.0, top_k=0, top_p=0.8), uniforms(keys, 1, torch.float32)[:, 0, 0]
    )
    freq = torch.bincount(draws, minlength=4).double() / rows
    # top_p 0.8 keeps tokens 0, 1, 2 (mass before token 2 is 0.75): renormalised 0.555, 0.278, 0.167.
    expected = torch.tensor([0.5, 0.25, 0.15, 0.0], dtype=torch.float64) / 0.9
    assert freq[3] == 0
    assert torch.allclose(freq, expected, atol=0.01)


def test_inverse_cdf_never_picks_a_filtered_token_even_at_u_equal_one():
    logits = torch.tensor([[1.0, 5.0, 0.0, -2.0]])
    assert sample_from_logits(logits, SamplingParams(top_k=1, top_p=1.0), torch.tensor([1.0])).item() == 1
    assert sample_from_logits(logits, SamplingParams(top_k=1, top_p=1.0), torch.tensor([1e-9])).item() == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"T": 0}, "T"),
        ({"T": -1.0}, "T"),
        ({"T": math.inf}, "T"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.2}, "top_p"),
        ({"T": True}, "T"),  # a bool is not a number here, though Python counts it as one
        ({"top_p": True}, "top_p"),
    ],
)
def test_bad_sampling_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_quantile_levels_are_checked_to_the_last_word():
    from kronos_tasks.inference.params import InputError, check_quantiles

    assert check_quantiles(None) == () and check_quantiles([0.9, 0.1]) == (0.9, 0.1)
    assert check_quantiles(np.array([0.25])) == (0.25,)
    refusals = {
        "quantiles must be a list of numbers such as [0.1, 0.5, 0.9], got '0.5'.": "0.5",
        "quantiles must be a list of numbers such as [0.1, 0.5, 0.9], got 0.5.": 0.5,
        "quantiles must lie strictly between 0 and 1, got 0.0.": [0.0, 0.5],
        "quantiles must lie strictly between 0 and 1, got 1.": [0.5, 1],
        "quantiles must lie strictly between 0 and 1, got True.": [True],
        "quantiles must be distinct, got [0.5, 0.1, 0.5].": [0.5, 0.1, 0.5],
    }
    for message, levels in refusals.items():
        with pytest.raises(InputError) as refused:
            check_quantiles(levels)
        assert str(refused.value) == message


def test_half_precision_logits_are_sampled_in_float32():
    # A bfloat16 cumulative sum over a large vocabulary keeps about 3 significant digits, which moves the
    # inverse-CDF choice of many rows; sampling must see the logits' exact float32 values instead.
    logits = (torch.randn(256, 1024, generator=torch.Generator().manual_seed(3)) * 2).to(torch.bfloat16)
    u = uniforms(stream_keys(torch.arange(256), torch.zeros(256, dtype=torch.int64)), 1, torch.float32)[:, 0, 0]
    params = SamplingParams(T=1.0, top_k=0, top_p=0.9)
    assert torch.equal(sample_from_logits(logits, params, u), sample_from_logits(logits.float(), params, u))
