"""Cached decoding against full recompute: logits, tokens and decoded bars, with padding and sliding windows."""

from __future__ import annotations

import pytest
import torch

from kronos_tasks.inference import cache as cache_module
from kronos_tasks.inference import generate as gen
from kronos_tasks.inference.sampling import SamplingParams
from kronos_tasks.model.presets import MODEL_PRESETS, TOKENIZER_PRESETS, random_model, random_tokenizer

# A little wider than "tiny" so that logits are not trivially close.
MODEL = {**MODEL_PRESETS["tiny"], "n_layers": 3, "d_model": 48, "ff_dim": 96, "s1_bits": 7, "s2_bits": 7}
TOKENIZER = {**TOKENIZER_PRESETS["tiny"], "s1_bits": 7, "s2_bits": 7}

CASES = {
    # lengths of the series' histories, pred_len, max_context
    "one series, no slide": ([40], 12, 512),
    "padded batch, no slide": ([40, 17, 33], 12, 512),
    "padded batch across the window boundary": ([40, 17, 33], 20, 48),
    "histories longer than the window": ([70, 30, 55], 10, 48),
}


def make_batch(tokenizer, lengths, pred_len, max_context, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    bars = [torch.randn(n, 6, generator=g, dtype=dtype) for n in lengths]

    def stamps(n):
        return torch.stack([torch.randint(0, s, (n,), generator=g) for s in (60, 24, 7, 32, 13)], -1).to(dtype)

    return gen.tokenize(tokenizer, bars, [stamps(n) for n in lengths], [stamps(pred_len) for _ in lengths], max_context)


def teacher_forced_logits(stepper_cls, model, batch, samples, tokens):
    """(s1 logits, s2 logits) per step when the generated tokens are fixed to ``tokens``."""
    s1, s2 = tokens
    generated = gen._Generated(s1=s1, s2=s2, stamps=batch.future_stamps.repeat_interleave(samples, 0))
    steps = stepper_cls(model, batch, samples, generated)
    out = []
    with torch.inference_mode():
        for i in range(batch.pred_len):
            s1_logits, s2_input = steps.s1_logits(i)
            out.append((s1_logits.clone(), steps.s2_logits(s2_input, s1[:, i], i).clone()))
    return out


def relative_difference(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def slot_logits(model, batch, samples, tokens):
    """``teacher_forced_logits`` of the cached path whose steps after the first run as the static-shape step."""
    s1, s2 = tokens
    generated = gen._Generated(s1=s1, s2=s2, stamps=batch.future_stamps.repeat_interleave(samples, 0))
    steps = gen._CachedSteps(model, batch, samples, generated)
    out = []
    with torch.inference_mode():
        s1_logits, s2_input = steps.s1_logits(0)
        out.append((s1_logits.clone(), steps.s2_logits(s2_input, s1[:, 0], 0).clone()))
        for layer in steps.layers:
            layer.clear_suffix()
        for slot in range(batch.pred_len - 1):
            at = torch.tensor([slot])
            s1_logits, s2_input = steps.slot_s1_logits(at)
            out.append((s1_logits.clone(), steps.slot_s2_logits(s2_input, s1[:, slot + 1], at).clone()))
    return out


NOT_SLIDING = [case for case, (lengths, pred_len, context) in CASES.items() if max(lengths) + pred_len - 1 <= context]


@pytest.mark.parametrize(
    "case, other", [(case, "full recompute") for case in CASES] + [(case, "static-shape steps") for case in NOT_SLIDING]
)
def test_cached_logits_match_full_recompute_and_the_static_shape_steps_in_float32(case, other):
    lengths, pred_len, max_context = CASES[case]
    tokenizer, model = random_tokenizer(TOKENIZER, seed=1), random_model(MODEL, seed=2)
    batch = make_batch(tokenizer, lengths, pred_len, max_context, torch.float32)
    samples = 3
    rows = len(lengths) * samples
    tokens = (torch.randint(0, 128, (rows, pred_len)), torch.randint(0, 128, (rows, pred_len)))
    cached = teacher_forced_logits(gen._CachedSteps, model, batch, samples, tokens)
    if other == "full recompute":
        theirs, tolerance = teacher_forced_logits(gen._FullSteps, model, batch, samples, tokens), 1e-5
    else:  # the same cached computation in other shapes: only float32 rounding apart
        theirs, tolerance = slot_logits(model, batch, samples, tokens), 1e-6
    for step, ((c1, c2), (t1, t2)) in enumerate(zip(cached, theirs)):
        assert relative_difference(c1, t1) <= tolerance, f"s1 logits differ at step {step}"
        assert relative_difference(c2, t2) <= tolerance, f"s2 logits differ at step {step}"


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    "params", [SamplingParams(top_k=1, top_p=1.0), SamplingParams(T=1.0, top_p=0.9)], ids=["greedy", "nucleus"]
)
def test_cached_tokens_and_bars_match_full_recompute_in_float64(case, params):
    lengths, pred_len, max_context = CASES[case]
    tokenizer, model = random_tokenizer(TOKENIZER, seed=3).double(), random_model(MODEL, seed=4).double()
    batch = make_batch(tokenizer, lengths, pred_len, max_context, torch.float64)
    seeds = torch.tensor([5, 6, 7][: len(lengths)])
    cached = gen.generate_tokens(model, batch, 4, params, seeds, method="cached")
    full = gen.generate_tokens(model, batch, 4, params, seeds, method="full")
    assert torch.equal(cached[0], full[0]) and torch.equal(cached[1], full[1])
    bars_cached = gen.decode_tokens(tokenizer, batch, *cached, 4, method="cached")
    bars_full = gen.decode_tokens(tokenizer, batch, *full, 4, method="full")
    torch.testing.assert_close(bars_cached, bars_full, rtol=1e-10, atol=1e-10)


def test_small_working_set_groups_give_the_same_result(monkeypatch):
    """Passes split into groups of series (to bound memory) change nothing in the result."""
    lengths, pred_len, max_context = [40, 17, 33, 25], 14, 48
    tokenizer, model = random_tokenizer(TOKENIZER, seed=3).double(), random_model(MODEL, seed=4).double()
    seeds = torch.tensor([1, 2, 3, 4])
    params = SamplingParams()

    def run():
        batch = make_batch(tokenizer, lengths, pred_len, max_context, torch.float64)
        s1, s2 = gen.generate_tokens(model, batch, 3, params, seeds)
        return s1, s2, gen.decode_tokens(tokenizer, batch, s1, s2, 3)

    whole = run()
    monkeypatch.setattr(gen, "ROWS_PER_PASS", 1)  # one series per pass
    monkeypatch.setattr(cache_module, "SCORES_PER_GROUP", 1)  # one query per attention group
    grouped = run()
    assert torch.equal(whole[0], grouped[0]) and torch.equal(whole[1], grouped[1])
    torch.testing.assert_close(whole[2], grouped[2], rtol=1e-10, atol=1e-10)


def test_shared_context_is_prefilled_once_per_series(monkeypatch):
    """The context of a series is run through the model once, not once per sample path."""
    tokenizer, model = random_tokenizer(TOKENIZER, seed=1), random_model(MODEL, seed=2)
    batch = make_batch(tokenizer, [30, 22], 6, 512, torch.float32)
    rows_seen = []
    original = model.context

    def counting_context(x, rope, attends):
        rows_seen.append(tuple(x.shape[:2]))
        return original(x, rope, attends)

    monkeypatch.setattr(model, "context", counting_context)
    gen.generate_tokens(model, batch, 8, SamplingParams(), torch.tensor([1, 2]))
    assert rows_seen[0] == (2, 30)  # the prefill: 2 series, not 16 paths
    assert all(shape == (16, 1) for shape in rows_seen[1:])  # then one token per path and step
    assert len(rows_seen) == 6


def test_pred_len_equal_to_the_context_decodes_generated_tokens_only():
    tokenizer, model = random_tokenizer(TOKENIZER, seed=1).double(), random_model(MODEL, seed=2).double()
    batch = make_batch(tokenizer, [20, 9], 16, 16, torch.float64)
    s1, s2 = gen.generate_tokens(model, batch, 2, SamplingParams(), torch.tensor([3, 4]))
    torch.testing.assert_close(
        gen.decode_tokens(tokenizer, batch, s1, s2, 2, method="cached"),
        gen.decode_tokens(tokenizer, batch, s1, s2, 2, method="full"),
        rtol=1e-10,
        atol=1e-10,
    )


def test_unknown_method_is_refused():
    tokenizer, model = random_tokenizer(TOKENIZER), random_model(MODEL)
    batch = make_batch(tokenizer, [5], 2, 16, torch.float32)
    with pytest.raises(ValueError, match="method must be one of"):
        gen.generate_tokens(model, batch, 1, SamplingParams(), torch.tensor([0]), method="fast")


@pytest.mark.parametrize("queries_per_group", [1, 2, 3, 100])
@pytest.mark.parametrize("causal_start", [None, 2])
def test_shared_prefix_attention_equals_softmax_over_the_concatenated_window(
    monkeypatch, queries_per_group, causal_start
):
    """Each path's query attends to its series' prefix columns inside the window and to its own suffix slots
    (up to its own slot when causal), in one softmax, whatever the grouping of the queries."""
    series, heads, prefix_len, head_dim, samples, length = 2, 2, 5, 4, 3, 4
    g = torch.Generator().manual_seed(0)
    cache = cache_module.SharedPrefixKV(
        series, heads, prefix_len, head_dim, samples, 8, dtype=torch.float64, device=torch.device("cpu")
    )
    prefix_k, prefix_v = (
        torch.randn(series, heads, prefix_len, head_dim, generator=g, dtype=torch.float64) for _ in "kv"
    )
    cache.set_prefix(prefix_k, prefix_v)
    rows = series * samples
    suffix_k, suffix_v = (torch.randn(rows, heads, 6, head_dim, generator=g, dtype=torch.float64) for _ in "kv")
    cache.write(suffix_k, suffix_v, 0)
    q = torch.randn(rows, heads, length, head_dim, generator=g, dtype=torch.float64)
    end = 6
    per_query = rows * heads * (prefix_len + end)
    monkeypatch.setattr(cache_module, "SCORES_PER_GROUP", queries_per_group * per_query)
    unmasked = cache.attend(q, end, causal_start)

    valid = torch.tensor([[False, True, True, True, True], [True] * prefix_len])  # series 0 is left-padded
    cache.set_prefix_valid(valid)
    masked = cache.attend(q, end, causal_start)

    for got, window in ((unmasked, torch.ones_like(valid)), (masked, valid)):
        expected = torch.empty_like(q)
        for row in range(rows):
            n = row // samples
            for t in range(length):
                seen = end if causal_start is None else causal_start + t + 1
                keys = torch.cat([prefix_k[n][:, window[n]], suffix_k[row][:, :seen]], dim=1)  # [H, K, hd]
                vals = torch.cat([prefix_v[n][:, window[n]], suffix_v[row][:, :seen]], dim=1)
                weights = torch.softmax(keys @ q[row, :, t, :, None] / head_dim**0.5, dim=1)  # [H, K, 1]
                expected[row, :, t] = (weights * vals).sum(dim=1)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    "params", [SamplingParams(top_k=1, top_p=1.0), SamplingParams(T=1.0, top_p=0.9)], ids=["greedy", "nucleus"]
)
def test_static_shape_steps_draw_the_tokens_of_the_plain_cached_steps(case, params, monkeypatch):
    lengths, pred_len, max_context = CASES[case]
    tokenizer, model = random_tokenizer(TOKENIZER, seed=3).double(), random_model(MODEL, seed=4).double()
    batch = make_batch(tokenizer, lengths, pred_len, max_context, torch.float64)
    seeds = torch.tensor([5, 6, 7][: len(lengths)])
    plain = gen.generate_tokens(model, batch, 4, params, seeds, slots=False)
    ran, real = [], gen._slot_steps
    monkeypatch.setattr(gen, "_slot_steps", lambda *args, **kwargs: ran.append(real(*args, **kwargs)))
    static = gen.generate_tokens(model, batch, 4, params, seeds, slots=True)
    assert torch.equal(plain[0], static[0]) and torch.equal(plain[1], static[1])
    # The static step ran (eagerly: no CUDA here) exactly where no window slides; sliding ones took plain steps.
    assert len(ran) == (1 if case in NOT_SLIDING else 0)


def test_the_static_shape_step_is_taken_only_where_it_applies():
    tokenizer = random_tokenizer(TOKENIZER, seed=1)
    steady = make_batch(tokenizer, [40, 17], 12, 512, torch.float32)
    lengths, pred_len, max_context = CASES["histories longer than the window"]
    sliding = make_batch(tokenizer, lengths, pred_len, max_context, torch.float32)
    assert gen.use_slots(True, "cached", steady, 4)
    assert not gen.use_slots(True, "full", steady, 4)
    assert not gen.use_slots(True, "cached", sliding, 4)
    assert not gen.use_slots(None, "cached", steady, 4)  # on the CPU the default is the plain steps
