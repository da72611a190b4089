"""KronosPredictor: upstream-compatible forecasts, reproducibility, batching, quantiles and input checks."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import reference
from conftest import FEATURES
from kronos_tasks import Forecast, Kronos, KronosPredictor, KronosTokenizer
from kronos_tasks.inference import InputError, derive_seed
from kronos_tasks.inference.features import time_features
from kronos_tasks.inference.sampling import SamplingParams


def window(df: pd.DataFrame, start: int, lookback: int, pred_len: int):
    x = df.iloc[start : start + lookback]
    y = df.iloc[start + lookback : start + lookback + pred_len]
    return (
        x[FEATURES].reset_index(drop=True),
        x["timestamps"].reset_index(drop=True),
        y["timestamps"].reset_index(drop=True),
    )


def test_drop_in_names_import_from_the_package():
    from kronos_tasks import Kronos as K
    from kronos_tasks import KronosPredictor as P
    from kronos_tasks import KronosTokenizer as T

    assert (K, T, P) == (Kronos, KronosTokenizer, KronosPredictor)


@pytest.mark.parametrize("method", ["cached", "full"])
@pytest.mark.parametrize("lookback, pred_len, max_context", [(60, 12, 512), (50, 20, 56)])
def test_predict_matches_the_plain_reference(tiny_pair64, a_share, method, lookback, pred_len, max_context):
    tokenizer, model = tiny_pair64
    x, x_ts, y_ts = window(a_share, 100, lookback, pred_len)
    params = SamplingParams(T=1.0, top_k=0, top_p=0.9)
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=max_context, method=method)
    forecast = predictor.predict(x, x_ts, y_ts, pred_len, sample_count=3, seed=99, return_samples=True)

    normalised, mean, std = reference.normalise(x.to_numpy())
    paths = reference.forecast_paths(
        model,
        tokenizer,
        normalised,
        time_features(x_ts),
        time_features(y_ts),
        pred_len,
        max_context,
        3,
        params,
        seed=99,
    )
    expected = paths * (std + 1e-5) + mean
    np.testing.assert_allclose(forecast.samples, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(forecast.mean.to_numpy(), expected.mean(0), rtol=1e-6)
    assert list(forecast.mean.columns) == FEATURES
    assert forecast.mean.index.equals(pd.Index(y_ts))


def test_greedy_forecast_is_deterministic_and_ignores_the_seed(tiny_pair32, a_share):
    tokenizer, model = tiny_pair32
    x, x_ts, y_ts = window(a_share, 0, 80, 10)
    predictor = KronosPredictor(model, tokenizer, device="cpu")
    a = predictor.predict(x, x_ts, y_ts, 10, top_k=1, sample_count=4, seed=1, return_samples=True)
    b = predictor.predict(x, x_ts, y_ts, 10, top_k=1, sample_count=4, seed=2, return_samples=True)
    np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.samples[0], a.samples[3])


def test_same_seed_reproduces_and_another_seed_differs(tiny_pair32, a_share):
    tokenizer, model = tiny_pair32
    x, x_ts, y_ts = window(a_share, 0, 80, 10)
    predictor = KronosPredictor(model, tokenizer, device="cpu")
    first = predictor.predict(x, x_ts, y_ts, 10, sample_count=2, seed=5)
    pd.testing.assert_frame_equal(first, predictor.predict(x, x_ts, y_ts, 10, sample_count=2, seed=5))
    assert not first.equals(predictor.predict(x, x_ts, y_ts, 10, sample_count=2, seed=6))
    torch.manual_seed(3)
    unseeded = predictor.predict(x, x_ts, y_ts, 10, sample_count=2)
    torch.manual_seed(3)
    pd.testing.assert_frame_equal(unseeded, predictor.predict(x, x_ts, y_ts, 10, sample_count=2))


def test_first_paths_do_not_depend_on_sample_count(tiny_pair32, a_share):
    tokenizer, model = tiny_pair32
    x, x_ts, y_ts = window(a_share, 0, 60, 8)
    predictor = KronosPredictor(model, tokenizer, device="cpu")
    few = predictor.predict(x, x_ts, y_ts, 8, sample_count=2, seed=8, return_samples=True)
    many = predictor.predict(x, x_ts, y_ts, 8, sample_count=5, seed=8, return_samples=True)
    np.testing.assert_allclose(few.samples, many.samples[:2], rtol=1e-5)


@pytest.mark.parametrize("method", ["cached", "full"])
def test_batch_of_mixed_lengths_equals_each_series_alone(tiny_pair64, a_share, method):
    tokenizer, model = tiny_pair64
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=64, batch_size=3, method=method)
    specs = [(0, 70, 10), (300, 25, 10), (900, 64, 10), (1200, 5, 10), (1500, 40, 10)]  # start, lookback, pred_len
    windows = [window(a_share, *spec) for spec in specs]
    seeds = [11, 22, 33, 44, 55]
    batch = predictor.predict_batch(
        [w[0] for w in windows],
        [w[1] for w in windows],
        [w[2] for w in windows],
        10,
        sample_count=3,
        seed=seeds,
        return_samples=True,
    )
    for (x, x_ts, y_ts), seed, got in zip(windows, seeds, batch):
        alone = predictor.predict(x, x_ts, y_ts, 10, sample_count=3, seed=seed, return_samples=True)
        assert got.seed == seed
        np.testing.assert_allclose(got.samples, alone.samples, rtol=1e-9, atol=1e-9)


def test_int_seed_in_a_batch_gives_each_series_a_derived_seed(tiny_pair32, a_share):
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu")
    windows = [window(a_share, s, 40, 6) for s in (0, 500)]
    batch = predictor.predict_batch(
        [w[0] for w in windows],
        [w[1] for w in windows],
        [w[2] for w in windows],
        6,
        sample_count=2,
        seed=7,
        quantiles=[0.5],
    )
    assert [f.seed for f in batch] == [derive_seed(7, 0), derive_seed(7, 1)]
    again = predictor.predict(*windows[1], 6, sample_count=2, seed=batch[1].seed)
    np.testing.assert_allclose(again.to_numpy(), batch[1].mean.to_numpy(), rtol=1e-5)


def test_quantiles_are_ordered_and_bracket_the_samples(tiny_pair32, a_share):
    tokenizer, model = tiny_pair32
    x, x_ts, y_ts = window(a_share, 0, 80, 12)
    forecast = KronosPredictor(model, tokenizer, device="cpu").predict(
        x, x_ts, y_ts, 12, sample_count=16, seed=3, quantiles=[0.1, 0.5, 0.9], return_samples=True
    )
    assert isinstance(forecast, Forecast)
    assert forecast.samples.shape == (16, 12, 6)
    q10, q50, q90 = (forecast.quantile(q).to_numpy() for q in (0.1, 0.5, 0.9))
    assert (q10 <= q50).all() and (q50 <= q90).all()
    assert (q90 > q10).any()
    assert (forecast.samples.min(0) <= q10 + 1e-6).all() and (q90 <= forecast.samples.max(0) + 1e-6).all()
    np.testing.assert_allclose(forecast.mean.to_numpy(), forecast.samples.mean(0), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(q50, np.median(forecast.samples, axis=0), rtol=1e-6)
    with pytest.raises(KeyError, match="0.25 was not requested"):
        forecast.quantile(0.25)


def test_volume_and_amount_are_filled_as_upstream_fills_them(tiny_pair32, a_share):
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu")
    x, x_ts, y_ts = window(a_share, 0, 50, 5)
    derived = x.drop(columns=["amount"])
    explicit = x.assign(amount=x["volume"] * x[["open", "high", "low", "close"]].mean(axis=1))
    pd.testing.assert_frame_equal(
        predictor.predict(derived, x_ts, y_ts, 5, seed=1), predictor.predict(explicit, x_ts, y_ts, 5, seed=1)
    )
    no_volume = x.drop(columns=["volume"])  # upstream zeroes amount too when volume is absent
    zeroed = x.assign(volume=0.0, amount=0.0)
    pd.testing.assert_frame_equal(
        predictor.predict(no_volume, x_ts, y_ts, 5, seed=1), predictor.predict(zeroed, x_ts, y_ts, 5, seed=1)
    )


@pytest.fixture
def ok_inputs(a_share):
    return window(a_share, 0, 30, 5)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, xt, yt: (x.drop(columns=["close"]), xt, yt, {}), r"missing price column\(s\) \['close'\]"),
        (lambda x, xt, yt: (x.assign(high=x["high"].where(x.index != 7)), xt, yt, {}), r"'high'.*row 7"),
        (
            lambda x, xt, yt: (x.assign(volume=x["volume"].replace(x["volume"].iloc[3], np.inf)), xt, yt, {}),
            r"'volume'.*infinite.*row 3",
        ),
        (lambda x, xt, yt: (x, xt.iloc[::-1].reset_index(drop=True), yt, {}), r"x_timestamp.*increase strictly; row 1"),
        (
            lambda x, xt, yt: (x, pd.concat([xt.iloc[:5], xt.iloc[4:29]]).reset_index(drop=True), yt, {}),
            r"row 5 .* duplicates row 4",
        ),
        (lambda x, xt, yt: (x, xt.iloc[:-1], yt, {}), r"x_timestamp: has 29 timestamps, expected 30"),
        (lambda x, xt, yt: (x, xt, yt.iloc[:4], {}), r"y_timestamp has 4 timestamps but pred_len is 5"),
        (lambda x, xt, yt: (x.iloc[:0], xt.iloc[:0], yt, {}), r"history is empty"),
        (lambda x, xt, yt: (x, xt, yt, {"T": 0.0}), r"T \(temperature\) must be"),
        (lambda x, xt, yt: (x, xt, yt, {"top_p": 0.0}), r"top_p must be in \(0, 1\]"),
        (lambda x, xt, yt: (x, xt, yt, {"top_p": 1.5}), r"top_p must be in \(0, 1\]"),
        (lambda x, xt, yt: (x, xt, yt, {"top_k": -2}), r"top_k must be an integer >= 0"),
        (lambda x, xt, yt: (x, xt, yt, {"sample_count": 0}), r"sample_count must be an integer >= 1"),
        (lambda x, xt, yt: (x, xt, yt, {"seed": -1}), r"seed must be an integer"),
        (lambda x, xt, yt: (x, xt, yt, {"quantiles": [0.1, 1.0]}), r"quantiles must lie strictly between 0 and 1"),
        (lambda x, xt, yt: ("not a frame", xt, yt, {}), r"expected a pandas DataFrame"),
    ],
)
def test_bad_input_is_named(tiny_pair32, ok_inputs, change, message):
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu")
    x, x_ts, y_ts, kwargs = change(*ok_inputs)
    with pytest.raises(InputError, match=message):
        predictor.predict(x, x_ts, y_ts, kwargs.pop("pred_len", 5), **kwargs)


def test_pred_len_beyond_the_context_and_bad_batch_lists_are_refused(tiny_pair32, ok_inputs):
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=16)
    x, x_ts, y_ts = ok_inputs
    with pytest.raises(InputError, match="pred_len must be an integer between 1 and 16"):
        predictor.predict(x, x_ts, y_ts, 17)
    with pytest.raises(InputError, match="one length"):
        predictor.predict_batch([x, x], [x_ts], [y_ts, y_ts], 5)
    with pytest.raises(InputError, match=r"df_list\[1\]: missing price column"):
        predictor.predict_batch([x, x.drop(columns=["open"])], [x_ts, x_ts], [y_ts, y_ts], 5)
    with pytest.raises(InputError, match="2 seeds for 1 series"):
        predictor.predict_batch([x], [x_ts], [y_ts], 5, seed=[1, 2])


def test_predictor_refuses_a_mismatched_pair(tiny_pair32):
    from kronos_tasks.model import ConfigError
    from kronos_tasks.model.presets import MODEL_PRESETS, random_model

    tokenizer, _ = tiny_pair32
    with pytest.raises(ConfigError, match="pair the model with the tokenizer"):
        KronosPredictor(random_model({**MODEL_PRESETS["tiny"], "s1_bits": 7}), tokenizer, device="cpu")


def test_predictor_uses_the_cached_path_by_default(tiny_pair32):
    tokenizer, model = tiny_pair32
    assert KronosPredictor(model, tokenizer, device="cpu").method == "cached"


def test_seeds_span_zero_to_the_largest_int64_and_nothing_outside():
    from kronos_tasks.inference.params import MAX_SEED
    from kronos_tasks.inference.predictor import _series_seeds

    assert _series_seeds(0, 1) == [0] and _series_seeds(MAX_SEED, 1) == [MAX_SEED]
    assert _series_seeds(7, 3) == [derive_seed(7, i) for i in range(3)]
    assert _series_seeds([0, MAX_SEED], 2) == [0, MAX_SEED]
    for bad in (-1, MAX_SEED + 1):
        with pytest.raises(InputError, match="seed"):
            _series_seeds(bad, 1)
        with pytest.raises(InputError, match=r"seed\[1\]"):
            _series_seeds([5, bad], 2)
    with pytest.raises(InputError, match="got 1 seeds for 2 series"):
        _series_seeds([5], 2)
    drawn = set()
    for manual in range(40):  # unseeded: drawn from torch's generator over the whole non-negative range
        torch.manual_seed(manual)
        drawn.add(_series_seeds(None, 1)[0])
    assert len(drawn) == 40 and max(drawn) > 2**61 and min(drawn) >= 0


def test_predict_refuses_a_seed_per_series(tiny_pair32, a_share):
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=64)
    x, x_ts, y_ts = window(a_share, 0, 40, 4)
    with pytest.raises(InputError, match="predict takes one int seed; predict_batch takes one per series"):
        predictor.predict(x, x_ts, y_ts, 4, seed=[1])


# --- the predictor's own promises: defaults, wiring of arguments, errors to their last words, progress log ---


def test_default_device_prefers_cuda_then_apple_metal_then_cpu(monkeypatch):
    import types

    from kronos_tasks.inference import predictor as predictor_module

    def torch_with(cuda: bool, mps: bool | None):
        backends = (
            types.SimpleNamespace()
            if mps is None
            else types.SimpleNamespace(mps=types.SimpleNamespace(is_available=lambda: mps))
        )
        return types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: cuda), backends=backends)

    for cuda, mps, expected in [
        (True, True, "cuda:0"),
        (False, True, "mps"),
        (False, False, "cpu"),
        (False, None, "cpu"),  # builds of torch without the Metal backend
    ]:
        monkeypatch.setattr(predictor_module, "torch", torch_with(cuda, mps))
        assert predictor_module.default_device() == expected, (cuda, mps)


def test_constructor_defaults_are_upstreams_and_bounds_are_named(tiny_pair32):
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer)
    assert (predictor.max_context, predictor.clip, predictor.batch_size) == (512, 5, 32)
    assert predictor.device == torch.device("cpu")  # no accelerator on the test machines
    smallest = KronosPredictor(model, tokenizer, device="cpu", max_context=1, clip=0.5, batch_size=1)
    assert (smallest.max_context, smallest.clip, smallest.batch_size) == (1, 0.5, 1)
    refusals = {
        "max_context must be an integer >= 1, got 0.": {"max_context": 0},
        "batch_size must be an integer >= 1, got 0.": {"batch_size": 0},
        "method must be one of ('cached', 'full'), got 'fast'.": {"method": "fast"},
        "clip must be > 0, got 0.": {"clip": 0},
        "dtype must be one of ('float32', 'bfloat16', 'float16'), got 'half'.": {"dtype": "half"},
    }
    for message, kwargs in refusals.items():
        with pytest.raises(InputError) as refused:
            KronosPredictor(model, tokenizer, device="cpu", **kwargs)
        assert str(refused.value) == message


def test_unseeded_forecasts_draw_their_seed_from_torchs_generator(tiny_pair32, ok_inputs):
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu")
    torch.manual_seed(21)
    drawn = int(torch.randint(0, 2**62, ()).item())
    torch.manual_seed(21)
    assert predictor.predict(*ok_inputs, 5, quantiles=[0.5]).seed == drawn


def test_predict_defaults_to_one_logged_sample_path(tiny_pair32, ok_inputs, caplog):
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu")
    caplog.clear()
    with caplog.at_level("INFO", logger="kronos_tasks.inference.predictor"):
        default = predictor.predict(*ok_inputs, 5, seed=4, return_samples=True)
    assert default.samples.shape == (1, 5, 6)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["chunk 1/1"]
    one = predictor.predict(*ok_inputs, 5, sample_count=1, seed=4, return_samples=True)
    np.testing.assert_array_equal(default.samples, one.samples)
    caplog.clear()
    with caplog.at_level("INFO", logger="kronos_tasks.inference.predictor"):
        predictor.predict(*ok_inputs, 5, seed=4, verbose=False)
    assert caplog.records == []


def test_quantiles_without_return_samples_give_a_forecast_without_paths(tiny_pair32, ok_inputs):
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu")
    x, x_ts, y_ts = ok_inputs
    single = predictor.predict(x, x_ts, y_ts, 5, sample_count=4, seed=2, quantiles=[0.5])
    [batched] = predictor.predict_batch([x], [x_ts], [y_ts], 5, sample_count=4, seed=[2], quantiles=[0.5])
    for forecast in (single, batched):
        assert isinstance(forecast, Forecast) and forecast.samples is None
        assert forecast.quantile(0.5).index.equals(pd.Index(y_ts))
        assert list(forecast.quantile(0.5).columns) == FEATURES
    pd.testing.assert_frame_equal(single.quantile(0.5), batched.quantile(0.5))


def test_predict_batch_passes_every_sampling_argument_on(tiny_pair32, a_share, caplog):
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu")
    x, x_ts, y_ts = window(a_share, 0, 40, 6)
    for sampling in ({"T": 0.6}, {"top_k": 3}, {"top_p": 0.5}):
        alone = predictor.predict(x, x_ts, y_ts, 6, sample_count=8, seed=9, return_samples=True, **sampling)
        default = predictor.predict(x, x_ts, y_ts, 6, sample_count=8, seed=9, return_samples=True)
        assert not np.array_equal(alone.samples, default.samples), sampling  # the argument changes the draws
        [batched] = predictor.predict_batch(
            [x], [x_ts], [y_ts], 6, sample_count=8, seed=[9], return_samples=True, **sampling
        )
        np.testing.assert_array_equal(batched.samples, alone.samples)
    caplog.clear()  # only what the calls below log
    with caplog.at_level("INFO", logger="kronos_tasks.inference.predictor"):
        [default] = predictor.predict_batch([x], [x_ts], [y_ts], 6, seed=[9], return_samples=True)
    assert default.samples.shape == (1, 6, 6)
    assert len(caplog.records) == 1
    caplog.clear()
    with caplog.at_level("INFO", logger="kronos_tasks.inference.predictor"):
        predictor.predict_batch([x], [x_ts], [y_ts], 6, seed=[9], verbose=False)
    assert caplog.records == []


def test_forecast_refuses_misshapen_arguments_in_full_words(tiny_pair32, ok_inputs):
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu")
    x, x_ts, y_ts = ok_inputs
    sampling = SamplingParams()
    lists = "df_list, x_timestamp_list and y_timestamp_list must be lists or tuples."
    refusals = [
        (lambda: predictor.predict_batch(x, [x_ts], [y_ts], 5), lists),
        (lambda: predictor.forecast([x], x_ts, [y_ts], 5, sampling, 1, [1], (), ["a"]), lists),
        (lambda: predictor.forecast([x], [x_ts], y_ts, 5, sampling, 1, [1], (), ["a"]), lists),
        (
            lambda: predictor.forecast([x], [x_ts], [y_ts], 5, sampling, 1, [1, 2], (), ["a"]),
            "give one seed and one label per series: 1 series.",
        ),
        (
            lambda: predictor.forecast([x], [x_ts], [y_ts], 5, sampling, 1, [2**63], (), ["a"]),
            f"seed of a must be an integer between 0 and {2**63 - 1}, got {2**63}.",
        ),
        (
            lambda: predictor.predict(x, x_ts, y_ts, 5, seed=[1]),
            "predict takes one int seed; predict_batch takes one per series.",
        ),
    ]
    for call, message in refusals:
        with pytest.raises(InputError) as refused:
            call()
        assert str(refused.value) == message
    with pytest.raises(InputError, match=r"^df: missing price column"):
        predictor.predict(x.drop(columns=["close"]), x_ts, y_ts, 5)
    with pytest.raises(InputError, match=r"^df: y_timestamp: timestamps must increase strictly"):
        predictor.predict(x, x_ts, y_ts.iloc[::-1], 5)
    [zero_seed] = predictor.forecast([x], [x_ts], [y_ts], 5, sampling, 1, [0], (), ["a"], verbose=False)
    assert zero_seed.seed == 0


def test_forecast_logs_each_chunk_by_default(tiny_pair32, a_share, caplog, monkeypatch):
    import types

    from kronos_tasks.inference import predictor as predictor_module

    clock = iter(np.arange(0, 100, 0.5))  # each chunk takes half a second
    monkeypatch.setattr(predictor_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu", batch_size=2)
    windows = [window(a_share, 100 * i, 30, 4) for i in range(5)]
    columns = [list(column) for column in zip(*windows)]
    caplog.clear()
    with caplog.at_level("INFO", logger="kronos_tasks.inference.predictor"):
        predictor.forecast(*columns, 4, SamplingParams(), 3, [1, 2, 3, 4, 5], (), list("abcde"))
    assert [r.getMessage() for r in caplog.records] == [
        "chunk 1/3: 2 series x 3 samples x 4 bars in 0.50 s (48 bars/s, cached)",
        "chunk 2/3: 2 series x 3 samples x 4 bars in 0.50 s (48 bars/s, cached)",
        "chunk 3/3: 1 series x 3 samples x 4 bars in 0.50 s (24 bars/s, cached)",
    ]


def test_chunks_group_series_of_similar_length_and_use_the_chosen_method(tiny_pair32, a_share, monkeypatch):
    from kronos_tasks.inference import predictor as predictor_module

    calls = {"tokenize": [], "generate": [], "decode": []}
    real = {name: getattr(predictor_module, name) for name in ("tokenize", "generate_tokens", "decode_tokens")}

    def tokenize(tokenizer, values, stamps, future_stamps, max_context):
        calls["tokenize"].append([len(v) for v in values])
        return real["tokenize"](tokenizer, values, stamps, future_stamps, max_context)

    def generate_tokens(*args):
        calls["generate"].append(args[-1])
        return real["generate_tokens"](*args)

    def decode_tokens(*args):
        calls["decode"].append(args[-1])
        return real["decode_tokens"](*args)

    for name, spy in (("tokenize", tokenize), ("generate_tokens", generate_tokens), ("decode_tokens", decode_tokens)):
        monkeypatch.setattr(predictor_module, name, spy)
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu", batch_size=2, method="full")
    lengths = [10, 50, 12, 48]
    windows = [window(a_share, 0, n, 3) for n in lengths]
    predictor.predict_batch(*[list(column) for column in zip(*windows)], 3, seed=1, verbose=False)
    assert calls == {"tokenize": [[50, 48], [12, 10]], "generate": ["full", "full"], "decode": ["full", "full"]}


@pytest.mark.parametrize("dtype, kept", [(torch.float32, np.float32), (torch.bfloat16, np.float32)])
def test_sample_paths_come_back_in_float32_from_single_and_half_precision_models(a_share, dtype, kept):
    from kronos_tasks.model.presets import random_model, random_tokenizer

    tokenizer, model = random_tokenizer("tiny", seed=11).to(dtype), random_model("tiny", seed=12).to(dtype)
    x, x_ts, y_ts = window(a_share, 0, 30, 5)
    forecast = KronosPredictor(model, tokenizer, device="cpu").predict(
        x, x_ts, y_ts, 5, sample_count=2, seed=1, return_samples=True
    )
    assert forecast.samples.dtype == kept and forecast.samples.shape == (2, 5, 6)


def test_dtype_casts_the_pair_and_a_bfloat16_forecast_stays_near_the_float32_one(a_share):
    from kronos_tasks.forecasting.engine import load_predictor

    demo = Path(__file__).resolve().parents[1] / "kronos_tasks" / "sample_data" / "demo_pair"
    windows = [window(a_share, start, 120, 24) for start in (0, 300, 700, 1100)]
    closes = {}
    for dtype in ("float32", "bfloat16"):
        predictor = load_predictor(demo / "tokenizer", demo / "model", 144, "cpu", 32, dtype)
        assert predictor.model.dtype == predictor.tokenizer.dtype == getattr(torch, dtype)
        forecasts = predictor.predict_batch(
            *[list(column) for column in zip(*windows)], 24, sample_count=16, seed=5, verbose=False
        )
        closes[dtype] = np.stack([f["close"].to_numpy() for f in forecasts])
    relative = np.abs(closes["bfloat16"] - closes["float32"]) / closes["float32"]
    assert np.isfinite(closes["bfloat16"]).all()
    # bfloat16 keeps 8 significant bits: 0.18% at most and 0.03% in the median on these windows here.
    assert relative.max() < 0.02, relative.max()
    assert relative.max() > 0  # it did run in bfloat16


def test_a_chunk_out_of_memory_is_split_and_the_forecasts_stay_the_same(tiny_pair32, a_share, monkeypatch, caplog):
    from kronos_tasks.inference import predictor as predictor_module

    tokenizer, model = tiny_pair32
    args = [list(column) for column in zip(*[window(a_share, start, 40, 4) for start in range(0, 700, 100)])]
    forecast = functools.partial(KronosPredictor.predict_batch, pred_len=4, sample_count=3, seed=2, verbose=False)
    whole = forecast(KronosPredictor(model, tokenizer, device="cpu", batch_size=8), *args, return_samples=True)

    real, sizes = predictor_module.generate_tokens, []

    def device_fits(most):
        def generate(model, batch, *rest):
            sizes.append(len(batch.kept))
            if len(batch.kept) > most:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (raised by the test)")
            return real(model, batch, *rest)

        return generate

    monkeypatch.setattr(predictor_module, "generate_tokens", device_fits(3))
    predictor = KronosPredictor(model, tokenizer, device="cpu", batch_size=8)
    with caplog.at_level("WARNING", logger="kronos_tasks.inference.predictor"):
        split = forecast(predictor, *args, return_samples=True)
    assert sizes == [7, 3, 3, 1] and predictor.batch_size == 3  # later forecasts start at the size that fit
    assert "out of memory decoding 7 series x 3 samples on cpu; retrying in chunks of 3 series" in caplog.text
    for alone, together in zip(whole, split):
        np.testing.assert_array_equal(alone.samples, together.samples)
    monkeypatch.setattr(predictor_module, "generate_tokens", device_fits(0))  # not even one series fits
    with pytest.raises(torch.OutOfMemoryError):
        forecast(predictor, *args)
