"""The pipeline's rules without Airflow: the rollout gate, the finish rule, backtest scores, the per-symbol retry
of a failed batch, and the typed payloads' round trip through Airflow's own serialiser."""

from __future__ import annotations

import inspect
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SAMPLE_DATA
from kronos_tasks.data import FEATURES, DataError
from kronos_tasks.data.watchlist import WatchItem
from kronos_tasks.errors import ParamsError
from kronos_tasks.evaluation.backtest import score_rows
from kronos_tasks.forecasting.params import ForecastParams
from kronos_tasks.forecasting.windows import make_window, predict_windows, window_from_arrays
from kronos_tasks.hashing import frame_sha256
from kronos_tasks.inference import KronosPredictor
from kronos_tasks.pipeline import daily, rollout
from kronos_tasks.pipeline.payloads import BatchResult, Failure, IngestSummary, RunPlan, RunSummary
from kronos_tasks.registry.pinned import PinnedPair

# --- the rollout gate --------------------------------------------------------------------------------------


def holdout(coverage=0.79, nominal=0.8):
    band = {"coverage": coverage, "nominal": nominal}
    return {"1d": {"holdout": {"calibrated": band, "raw": {**band, "coverage": 0.3}, "histvol": band}}}


def scores(skill, brier, mae=1.0, persistence_mae=1.2, version="2", crps=(1.0, 1.1, 1.2), calibration=None):
    model_crps, histvol_crps, persistence_crps = crps
    return {
        "version": version,
        "scores": {
            "model": {"skill": skill, "brier": brier, "mae": mae, "direction_accuracy": 0.5, "crps": model_crps},
            "persistence": {"mae": persistence_mae, "crps": persistence_crps},
            "histvol": {"crps": histvol_crps},
        },
        "calibration": holdout() if calibration is None else calibration,
    }


GATE = rollout.Gate(min_skill=0.0, max_brier=0.25, tolerance=0.02)


def test_gate_promotes_a_candidate_that_beats_persistence_and_holds_up_against_the_champion():
    decision = rollout.decide(scores(0.10, 0.20), scores(0.11, 0.21, version="1"), GATE, force=False)
    assert decision["action"] == "promote" and decision["reasons"] == ["passed the gate"]
    assert decision["numbers"]["candidate_skill"] == 0.10 and decision["numbers"]["champion_version"] == "1"
    numbers = decision["numbers"]
    assert (numbers["crps_model"], numbers["crps_histvol"], numbers["1d_calibrated_coverage"]) == (1.0, 1.1, 0.79)
    # the coverage tolerance is inclusive: 0.75 is within 0.05 of 0.80
    assert rollout.decide(scores(0.10, 0.20, calibration=holdout(0.75)), None, GATE, False)["action"] == "promote"


@pytest.mark.parametrize(
    "candidate, champion, reason",
    [
        (scores(-0.05, 0.20), None, "loses to carrying the last close forward"),
        (scores(0.10, 0.30), None, "Brier score 0.3000 > 0.2500"),
        (scores(0.10, 0.20), scores(0.15, 0.20, version="1"), "worse than the champion's +0.1500 beyond"),
        (scores(0.10, 0.20), scores(0.10, 0.17, version="1"), "Brier 0.2000 is worse than the champion's 0.1700"),
        (scores(None, None), None, "no finite skill or Brier score"),
        (scores(0.10, 0.20, crps=(1.15, 1.1, 1.2)), None, "does not beat the historical-volatility band's 1.1"),
        (scores(0.10, 0.20, crps=(1.25, 1.3, 1.2)), None, "does not beat persistence's 1.2"),
        (scores(0.10, 0.20, calibration=holdout(0.72)), None, "covered 0.72 of held-back outcomes, outside 80%"),
        (scores(0.10, 0.20, calibration={}), None, "no calibration could be fitted"),
    ],
)
def test_gate_refuses_with_the_reason_and_force_promotes_recording_it(candidate, champion, reason):
    refused = rollout.decide(candidate, champion, GATE, force=False)
    assert refused["action"] == "refuse" and any(reason in r for r in refused["reasons"])
    forced = rollout.decide(candidate, champion, GATE, force=True)
    assert forced["action"] == "force_promote" and forced["reasons"] == refused["reasons"]


def test_gate_tolerance_is_inclusive():
    champion = scores(0.12, 0.20, version="1")
    assert rollout.decide(scores(0.10, 0.22), champion, GATE, force=False)["action"] == "promote"
    assert rollout.decide(scores(0.0999, 0.20), champion, GATE, force=False)["action"] == "refuse"


def test_rollout_branches_to_rollback_or_verify_and_needs_a_candidate():
    assert rollout.choose(True, None) == "rollback"
    assert rollout.choose(False, "3") == "verify"
    with pytest.raises(ParamsError, match="set the candidate param"):
        rollout.choose(False, None)


# --- the finish rule ---------------------------------------------------------------------------------------


def summary(failed: int, total: int, limit: float) -> RunSummary:
    failures = {f"S{i}": Failure("window", f"reason {i}") for i in range(failed)}
    return RunSummary(
        run_id="r",
        status="partial" if failed else "success",
        symbols_ok=total - failed,
        symbols_failed=failed,
        failures=failures,
        forecast_rows=0,
        forecast_seconds=0.0,
        bars_per_second=None,
        failed_share=failed / total,
        max_failed_share=limit,
    )


def test_finish_passes_up_to_the_allowed_share_and_fails_past_it_naming_the_symbols():
    assert daily.finish(summary(1, 5, 0.2)).symbols_failed == 1  # exactly the limit passes
    with pytest.raises(daily.RunFailed, match=r"2 symbol\(s\) failed \(40% > 20% allowed\): S0: reason 0; S1"):
        daily.finish(summary(2, 5, 0.2))
    with pytest.raises(daily.RunFailed):
        daily.finish(summary(1, 5, 0.0))


# --- backtest scores against hand-computed values -----------------------------------------------------------


def test_score_rows_against_hand_computed_values():
    rows = pd.DataFrame(
        {
            "symbol": ["A", "A", "A", "A"],
            "origin_ts": [1, 1, 2, 2],
            "step": [1, 2, 1, 2],
            "actual": [11.0, 9.0, 12.0, 10.0],
            "last": [10.0] * 4,
            "persistence": [10.0] * 4,
            "mean": [10.5, 9.5, 11.0, 10.5],
            "p_up": [0.8, 0.3, 0.6, 0.5],
            "crps": [0.2, 0.4, 0.6, 0.8],
            "q0.1": [10.0, 8.0, 11.5, 10.2],
            "q0.9": [12.0, 9.5, 11.9, 11.0],
            "hv_sd": [1.0, 2.0, 1.0, 0.0],
            "hv_q0.1": [8.7, 7.4, 8.7, 10.0],
            "hv_q0.9": [11.3, 12.6, 11.3, 10.0],
        }
    )
    got = score_rows(rows, (0.1, 0.9))
    # The volatility band: 11 and 9 inside, 12 outside, 10 on the degenerate band's edge: 3 of 4.
    assert got["histvol"]["coverage"] == pytest.approx(0.75) and got["persistence"]["crps"] == pytest.approx(1.0)

    def crps_normal(mean, sd, y):  # closed form, from the definition: sd (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))
        if sd == 0:
            return abs(y - mean)
        z = (y - mean) / sd
        cdf, pdf = 0.5 * (1 + math.erf(z / math.sqrt(2))), math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        return sd * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))

    want = np.mean([crps_normal(10, sd, y) for sd, y in zip([1, 2, 1, 0], [11, 9, 12, 10])])
    assert got["histvol"]["crps"] == pytest.approx(want)
    model = got["model"]
    assert (got["points"], got["origins"]) == (4, 2)
    assert model["mae"] == pytest.approx(0.625) and got["persistence"]["mae"] == pytest.approx(1.0)
    assert model["skill"] == pytest.approx(0.375) and got["persistence"]["skill"] == pytest.approx(0.0)
    assert model["direction_accuracy"] == pytest.approx(0.75)
    assert model["brier"] == pytest.approx(0.135) and got["persistence"]["brier"] == pytest.approx(0.25)
    assert model["brier_skill"] == pytest.approx(1 - 0.135 / 0.25)
    assert model["coverage_0.1_0.9"] == pytest.approx(0.5) and model["crps"] == pytest.approx(0.5)
    # pinball max(q * d, (q - 1) * d), d = actual - quantile: level 0.1 losses 0.1, 0.1, 0.05, 0.18; level 0.9
    # losses 0.1, 0.05, 0.09, 0.1
    assert model["pinball"] == pytest.approx(np.mean([(0.1 + 0.1 + 0.05 + 0.18) / 4, (0.1 + 0.05 + 0.09 + 0.1) / 4]))
    assert got["by_horizon"][1]["mae"] == pytest.approx(0.75) and got["by_horizon"][2]["mae"] == pytest.approx(0.5)


# --- predict_windows: one bad symbol in a batch ------------------------------------------------------------


@pytest.fixture
def windows(a_share):
    bars = a_share.rename(columns={"timestamps": "ts"}).iloc[:200].copy()
    bars["ts"] = pd.DatetimeIndex(bars["ts"]).tz_localize("Asia/Shanghai").tz_convert("UTC")
    params = ForecastParams.from_dict({"pred_len": 4, "sample_count": 2, "lookback": 64, "batch_size": 8})
    made = []
    for symbol in ("GOOD1", "BAD", "GOOD2"):
        frame = bars.copy()
        if symbol == "BAD":
            frame.loc[frame.index[-3], "high"] = np.inf  # input the predictor refuses
        item = WatchItem(symbol, "XSHG", "5min", None, "Asia/Shanghai")
        made.append(make_window(item, frame, params, 512))
    return params, made


def test_a_bad_symbol_in_a_batch_fails_alone_and_the_others_match_their_solo_forecasts(tiny_pair32, windows):
    params, made = windows
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=512)
    predicted, failed = predict_windows(predictor, made, params, run_seed=7)
    assert sorted(predicted) == ["GOOD1", "GOOD2"]
    assert list(failed) == ["BAD"] and "InputError" in failed["BAD"] and "'high'" in failed["BAD"]
    alone, _ = predict_windows(predictor, [made[2]], params, run_seed=7)
    np.testing.assert_array_equal(predicted["GOOD2"].samples, alone["GOOD2"].samples)


def test_a_window_cut_from_database_arrays_is_the_window_of_the_same_bars_as_a_frame(a_share):
    """The daily forecast cuts windows from the arrays the database hands over; replay and the CLI from frames.
    Both must read the same bars, hash them alike (the hash is the audit's proof of the data) and forecast the
    same bar times."""
    bars = a_share.rename(columns={"timestamps": "ts"}).iloc[:120].copy()
    bars["ts"] = pd.DatetimeIndex(bars["ts"]).tz_localize("Asia/Shanghai").tz_convert("UTC")
    bars["volume"] = bars["volume"].round().astype(np.int64)  # integer columns hash as float64 either way
    params = ForecastParams.from_dict({"pred_len": 4, "lookback": 64})
    item = WatchItem("A", "XSHG", "5min", None, "Asia/Shanghai")
    framed = make_window(item, bars, params, 512)
    times = pd.DatetimeIndex(bars["ts"]).as_unit("us")  # as the database returns them
    values = np.stack([bars[f].to_numpy(np.float64) for f in FEATURES])
    cut = window_from_arrays(item, times, values, params, 512)
    assert cut.sha256 == framed.sha256 == frame_sha256(bars.iloc[-64:], ["ts", *FEATURES])
    assert cut.future.equals(framed.future) and len(cut.future) == 4
    pd.testing.assert_frame_equal(
        cut.bars[FEATURES], bars.iloc[-64:][FEATURES].reset_index(drop=True), check_dtype=False
    )
    assert cut.record() == framed.record() and cut.record()["bars"] == 64
    assert cut.record()["last_ts"] == bars["ts"].iloc[-1].to_pydatetime()
    with pytest.raises(DataError, match="A: 3 bar\\(s\\) before the forecast origin, min_history is"):
        window_from_arrays(item, times[:3], values[:, :3], params, 512)


def test_an_unexpected_error_is_not_turned_into_symbol_failures(tiny_pair32, windows, monkeypatch):
    params, made = windows
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=512)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the decoder")

    monkeypatch.setattr(predictor, "forecast", broken)
    with pytest.raises(RuntimeError, match="a bug in the decoder"):
        predict_windows(predictor, made, params, run_seed=7)


def test_a_non_finite_forecast_fails_only_its_symbol(tiny_pair32, windows, monkeypatch):
    params, made = windows
    tokenizer, model = tiny_pair32
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=512)
    good = [made[0], made[2]]
    real = predictor.forecast

    def overflowing(*args, **kwargs):  # as a decode that overflowed for GOOD2 would return
        out = real(*args, **kwargs)
        labels = inspect.signature(real).bind(*args, **kwargs).arguments["labels"]
        for label, forecast in zip(labels, out):
            if label == "GOOD2":
                forecast.samples[:, 1, 4] = np.inf
        return out

    monkeypatch.setattr(predictor, "forecast", overflowing)
    predicted, failed = predict_windows(predictor, good, params, run_seed=7)
    assert sorted(predicted) == ["GOOD1"] and list(failed) == ["GOOD2"]
    assert "['volume'] is not finite" in failed["GOOD2"]


# --- payloads through Airflow's serialiser -----------------------------------------------------------------


def test_payloads_round_trip_through_airflow_serde():
    from airflow.sdk import serde

    from kronos_tasks.pipeline import payloads

    payloads._allow_in_xcom()  # what importing the module does in an Airflow process
    params = ForecastParams.from_dict({"pred_len": 8}).resolve(512, "champion", 32, seed_key="r")
    pinned = PinnedPair("kronos-model", "3", "a" * 64, "run", "/m", "kronos-tokenizer", "1", "b" * 64, "run", "/t", 512)
    values = [
        RunPlan(
            "r",
            "dag",
            "manual__1",
            "2024-08-28T21:30:00+00:00",
            "2024-08-28T21:30:01+00:00",
            params,
            pinned,
            0.2,
            3,
            4,
            9,
        ),
        IngestSummary(0, 5, 1, 300, 2),
        BatchResult(0, 4, 1, 96, 1.5, 0.2, 0.1, "cpu", "h", 2),
        summary(1, 5, 0.2),
        pinned,
    ]
    for value in values:
        encoded = serde.serialize(value)
        assert encoded["__classname__"] == f"{type(value).__module__}.{type(value).__qualname__}"
        assert serde.deserialize(encoded) == value
    assert values[0].seed == params.seed and params.lookback == 512 - 8 and params.batch_size == 32


def test_mlflow_params_of_a_run_record_the_precision_it_decoded_in():
    from kronos_tasks.pipeline.tracking import run_params

    params = ForecastParams.from_dict({"pred_len": 8, "dtype": "bfloat16"}).resolve(512, "champion", 32, seed_key="r")
    pinned = PinnedPair("kronos-model", "3", "a" * 64, "run", "/m", "kronos-tokenizer", "1", "b" * 64, "run", "/t", 512)
    run = RunPlan("r", "dag", None, "2024-08-28T21:30:00+00:00", "2024-08-28T21:30:01+00:00", params, pinned, 0.2, 3)
    logged = run_params(run, summary(1, 5, 0.2), "cuda:0")
    assert (logged["dtype"], logged["device"], logged["symbols"]) == ("bfloat16", "cuda:0", 5)
    assert (logged["model_sha256"], logged["pred_len"], logged["seed"]) == ("a" * 64, 8, params.seed)


def test_plan_refuses_more_shards_than_airflow_maps_and_records_the_run(kronos_env, tiny_checkpoints):
    from kronos_tasks.pipeline import runtime
    from kronos_tasks.registry import Registry
    from kronos_tasks.storage import get_run, make_engine, upgrade

    upgrade(make_engine(kronos_env.db_url))
    Registry(kronos_env).register(*tiny_checkpoints[0], alias="champion", trained=False)
    entries = [{"symbol": f"S{i}", "exchange": "XNYS", "interval": "1d"} for i in range(5)]
    run = daily.plan({}, "2024-08-28T21:30:00+00:00", "dag", watchlist=entries, forecast_shards=2)
    assert (run.shards, run.symbols) == (2, 5) and daily.shard_indices(run) == [0, 1]
    with pytest.raises(ParamsError, match=r"forecast_shards is 9, more than Airflow maps .*max_map_length = 8"):
        daily.plan({}, "2024-08-29T21:30:00+00:00", "dag", watchlist=entries, forecast_shards=9, max_map_length=8)
    stored = get_run(runtime.engine(), "dag@2024-08-29T21:30:00+00:00")
    assert stored.status == "failed" and "max_map_length" in stored.extra["error"]
    twice = [*entries, {"symbol": "S0", "exchange": "XNYS", "interval": "1h"}]
    with pytest.raises(ParamsError, match=r"lists \['S0'\] at several intervals"):
        daily.plan({}, "2024-08-28T21:30:00+00:00", "dag", watchlist=twice)
    assert daily.plan({}, "2024-08-28T21:30:00+00:00", "dag").symbols == 2  # the bundled watchlist


def test_replay_explains_a_difference_by_the_stream_version_first():
    from kronos_tasks.pipeline.replay import _why

    recorded = {"stream_version": 1, "device": "cpu", "code_version": "0.1.0", "model": "kronos-model v1"}
    replayed = {**recorded, "stream_version": 2}
    assert _why(recorded, replayed, True).startswith("recorded with random stream 1, this build draws stream 2")
    assert _why(recorded, {**recorded, "device": "cuda:0"}, True).startswith("recorded on cpu, replayed on cuda:0")


# --- the forecasts artifact ---------------------------------------------------------------------------------


@pytest.mark.parametrize("calibrated", [True, False])
def test_forecasts_artifact_flattens_every_band_with_one_schema_across_chunks(
    db_url, tmp_path, monkeypatch, calibrated
):
    """forecasts.csv and forecasts.parquet hold every stored row with each band's levels as columns, read in
    chunks whose content differs (no calibrated value in the first ones): the same values in both files
    (on PostgreSQL the Parquet file comes from COPY's CSV, here in blocks of a few rows, with a symbol that
    needs quoting)."""
    from datetime import datetime, timedelta, timezone

    from kronos_tasks.pipeline import runtime, tracking
    from kronos_tasks.storage import make_engine, persist_run, upgrade

    monkeypatch.setenv("KRONOS_DB_URL", db_url)
    runtime.engine_for.cache_clear()
    engine = make_engine(db_url)
    upgrade(engine)
    params = ForecastParams.from_dict({"pred_len": 3, "quantiles": [0.1, 0.5, 0.9]}).resolve(64, "champion", 8, "r")
    pinned = PinnedPair("kronos-model", "3", "a" * 64, "run", "/m", "kronos-tokenizer", "1", "b" * 64, "run", "/t", 64)
    run = RunPlan("r", "dag", None, "2024-08-28T21:30:00+00:00", "2024-08-28T21:30:01+00:00", params, pinned, 0.2)
    if calibrated:
        run.calibrations["1d"] = "c" * 64
    origin = datetime(2024, 8, 28, 20, 0, tzinfo=timezone.utc)
    rows = []
    for s, symbol in enumerate(["AAA", 'B,"B']):
        for f, feature in enumerate(["open", "close"]):
            for step in (1, 2, 3):
                value = 100.0 * (s + 1) + 10 * f + step + 0.123456789012345
                close = feature == "close"
                rows.append(
                    {
                        "run_id": "r",
                        "symbol": symbol,
                        "feature": feature,
                        "step": step,
                        "interval": "1d",
                        "origin_ts": origin,
                        "target_ts": origin + timedelta(days=step),
                        "last_value": 99.5,
                        "mean": value,
                        "quantiles": {"0.1": value - 1, "0.5": value, "0.9": value + 1},
                        "prob_above_last": 0.25 * step,
                        "series_seed": 2**62 + s,
                        "calibrated_quantiles": (
                            {"0.1": value - 2, "0.5": value, "0.9": value + 2} if close and s == 1 else None
                        ),
                        "calibrated_prob_above_last": 0.1 * step if close and s == 1 else None,
                        "baseline_quantiles": {"0.1": value - 3, "0.5": value, "0.9": value + 3} if close else None,
                    }
                )
    persist_run(engine, daily.run_row(run, [], "success", origin), rows, [])
    monkeypatch.setattr(tracking, "CSV_CHUNK", 5)  # the first chunks hold no calibrated value
    monkeypatch.setattr(tracking, "COPY_BLOCK_BYTES", 700)  # about three rows
    csv = pd.read_csv(tracking.write_forecasts(run, tmp_path, 2))
    parquet = pd.read_parquet(tracking.write_forecasts(run, tmp_path, tracking.PER_SYMBOL_DATASETS + 1))

    expected = pd.DataFrame(sorted(rows, key=lambda r: (r["symbol"], r["feature"], r["step"])))
    bands = {"quantiles": "q", "baseline_quantiles": "hv_q"}
    if calibrated:
        bands["calibrated_quantiles"] = "cal_q"
    for band, prefix in bands.items():
        for level in ("0.1", "0.5", "0.9"):
            expected[f"{prefix}{level}"] = [(v or {}).get(level, np.nan) for v in expected[band]]
    expected = expected.drop(columns=["quantiles", "calibrated_quantiles", "baseline_quantiles"])
    assert sorted(csv.columns) == sorted(expected.columns) == sorted(parquet.columns)
    assert ("cal_q0.1" in csv.columns) is calibrated
    for frame in (csv, parquet):
        for column in expected.columns:
            got, want = frame[column], expected[column]
            if column.endswith("_ts"):
                assert (pd.to_datetime(got, utc=True) == pd.to_datetime(want, utc=True)).all()
            elif pd.api.types.is_numeric_dtype(want):
                np.testing.assert_array_equal(got.to_numpy(float), want.to_numpy(float), err_msg=column)
            else:
                assert got.astype(str).tolist() == want.astype(str).tolist(), column
    assert parquet["series_seed"].dtype == np.int64 and parquet["calibrated_prob_above_last"].dtype == np.float64
    runtime.engine_for.cache_clear()


def test_a_shard_is_forecast_in_chunks_and_a_retry_replaces_what_it_staged(kronos_env, tiny_checkpoints, monkeypatch):
    import torch
    from sqlalchemy import select

    from kronos_tasks.pipeline import runtime
    from kronos_tasks.pipeline.ingest import ingest_file
    from kronos_tasks.registry import Registry
    from kronos_tasks.storage import item_failures, make_engine, upgrade
    from kronos_tasks.storage.models import StagedForecastChunk, StagedWindow
    from kronos_tasks.storage.runs import _ipc_table

    engine = make_engine(kronos_env.db_url)
    upgrade(engine)
    Registry(kronos_env).register(*tiny_checkpoints[0], alias="champion", trained=False)
    symbols = ["A", "B", "NONE", "C", "D"]  # NONE has no bars: it fails (as stale) in the middle chunk
    for symbol in symbols:
        if symbol != "NONE":
            ingest_file(engine, SAMPLE_DATA / "GOOG_1d.csv", symbol=symbol, interval="1d", exchange="XNYS")
    entries = [{"symbol": s, "exchange": "XNYS", "interval": "1d"} for s in symbols]
    params = {"pred_len": 3, "sample_count": 2, "lookback": 64}
    run = daily.plan(params, "2013-03-01T21:30:00+00:00", "dag", watchlist=entries, forecast_shards=1)

    def staged() -> tuple[list, list]:
        with runtime.engine().connect() as connection:
            chunks = connection.execute(
                select(StagedForecastChunk.arrow).where(StagedForecastChunk.run_id == run.run_id)
            ).scalars()
            rows = [
                (r["symbol"], r["feature"], r["step"], r["mean"])
                for chunk in chunks
                for r in _ipc_table(chunk).to_pylist()
            ]
            windows = connection.execute(
                select(StagedWindow.symbol, StagedWindow.sha256).where(StagedWindow.run_id == run.run_id)
            ).all()
        return sorted(rows), sorted(windows)

    # torch's thread pools are process-wide: left as they are here (a pool resized in a process that later
    # forks, as mutmut's runner does, can hang the children)
    monkeypatch.setattr(runtime, "own_threads", torch.get_num_threads)
    monkeypatch.setattr(daily, "FORECAST_CHUNK", 2)  # three chunks: A B | NONE C | D
    result = daily.forecast(run, 0)
    assert (result.ok, result.failed, result.bars) == (4, 1, 4 * 2 * 3)
    chunked = staged()
    assert len(chunked[0]) == 4 * 6 * 3 and [w[0] for w in chunked[1]] == ["A", "B", "C", "D"]
    assert [f[:2] for f in item_failures(engine, run.run_id)] == [("NONE", "stale")]
    daily.forecast(run, 0)  # a retry of the shard: replaced, not added to
    assert staged() == chunked
    monkeypatch.setattr(daily, "FORECAST_CHUNK", 500)
    daily.forecast(run, 0)  # the whole shard at once stages the same rows
    assert staged() == chunked


def test_a_forecast_task_takes_its_pinned_pair_from_the_cache_without_the_registry_and_refetches_a_damaged_copy(
    kronos_env, tiny_checkpoints, monkeypatch
):
    import torch

    from kronos_tasks.pipeline import runtime
    from kronos_tasks.pipeline.ingest import ingest_file
    from kronos_tasks.registry import Registry
    from kronos_tasks.registry.cache import cached_pair
    from kronos_tasks.storage import make_engine, upgrade

    engine = make_engine(kronos_env.db_url)
    upgrade(engine)
    registered = Registry(kronos_env).register(*tiny_checkpoints[0], alias="champion", trained=False)
    for symbol in ("A", "B"):
        ingest_file(engine, SAMPLE_DATA / "GOOG_1d.csv", symbol=symbol, interval="1d", exchange="XNYS")
    entries = [{"symbol": s, "exchange": "XNYS", "interval": "1d"} for s in ("A", "B")]
    params = {"pred_len": 3, "sample_count": 2, "lookback": 64}
    run = daily.plan(params, "2013-03-01T21:30:00+00:00", "dag", watchlist=entries, forecast_shards=1)
    assert run.pinned.model_path == "" and run.pinned.model_config_sha256 is not None  # the plan fetches nothing
    cached = cached_pair(kronos_env.model_cache, run.pinned)
    assert (cached.model_path, cached.tokenizer_path) == (registered.model_path, registered.tokenizer_path)

    monkeypatch.setattr(runtime, "own_threads", torch.get_num_threads)  # see the test above
    resolved = []
    real_registry = runtime.registry

    def registry():
        resolved.append(True)
        return real_registry()

    monkeypatch.setattr(runtime, "registry", registry)
    assert daily.forecast(run, 0).ok == 2 and resolved == []  # the registry was not asked
    config = Path(registered.model_path) / "config.json"
    config.write_text(config.read_text().replace("{", '{"changed": 1, ', 1))  # the cached config differs
    assert cached_pair(kronos_env.model_cache, run.pinned) is None
    assert daily.forecast(run, 0).ok == 2 and resolved == [True]  # fetched again, verified, and cached
    assert cached_pair(kronos_env.model_cache, run.pinned) == cached


def test_rollout_predictors_take_the_torch_threads_their_task_owns(tmp_path, tiny_checkpoints):
    """In a process of its own (torch's thread pools are process-wide): KRONOS_TORCH_THREADS=3, a count no
    default gives on a machine without exactly three cores, reaches the predictor's process."""
    import os
    import subprocess

    tokenizer, model = tiny_checkpoints[0]
    code = (
        "import torch\n"
        "from kronos_tasks.forecasting.params import ForecastParams\n"
        "from kronos_tasks.pipeline import rollout\n"
        "from kronos_tasks.registry.pinned import PinnedPair\n"
        f"pair = PinnedPair('m', '1', 'a', None, {str(model)!r}, 't', '1', 'b', None, {str(tokenizer)!r}, 512)\n"
        "rollout._predictor(pair, ForecastParams.from_dict({}))\n"
        "print(torch.get_num_threads(), torch.get_num_interop_threads())\n"
    )
    env = {**os.environ, "KRONOS_HOME": str(tmp_path / "home"), "KRONOS_DEVICE": "cpu", "KRONOS_TORCH_THREADS": "3"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "2"]


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e5, -1e9])
def test_fan_charts_keep_every_label_inside_the_image_and_apart(scale):
    """The charts' margins are set from the tick labels, not measured by a drawing pass: at any price scale
    (the formatter's offset and signs included) no label leaves the image and stacked charts do not touch."""
    import matplotlib.pyplot as plt

    from kronos_tasks.pipeline.charts import FanInput, Provenance, fan_figure, overview_figure

    rng = np.random.default_rng(7)
    history = pd.DataFrame(
        {
            "ts": pd.date_range("2024-03-01 20:00", periods=60, freq="B", tz="UTC"),
            "close": scale * (1 + 0.01 * rng.standard_normal(60).cumsum()),
        }
    )
    steps = np.arange(1, 25)
    mean = scale * (1 + 0.01 * rng.standard_normal(24).cumsum())
    forecast = pd.DataFrame(
        {
            "step": steps,
            "target_ts": pd.date_range("2024-05-23 20:00", periods=24, freq="B", tz="UTC"),
            "mean": mean,
            "prob_above_last": 0.5,
            "q0.1": mean - abs(scale) * 0.05,
            "q0.5": mean,
            "q0.9": mean + abs(scale) * 0.05,
        }
    )
    fans = [FanInput(f"SYMBOL-{n}", "1d", "America/New_York", history, forecast) for n in range(4)]
    about = Provenance("run 2024-05-23 21:30 UTC", "kronos-model v12", "UNTRAINED model: its forecasts are noise")
    for figure in (fan_figure(fans[0], about), overview_figure(fans, about, total=1000)):
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        image = figure.bbox
        boxes = [axis.get_tightbbox(renderer) for axis in figure.axes]
        if figure._suptitle is not None:
            boxes.insert(0, figure._suptitle.get_window_extent(renderer))
        for box in boxes:
            assert image.x0 <= box.x0 and box.x1 <= image.x1 and image.y0 <= box.y0 and box.y1 <= image.y1, (box, image)
        for upper, lower in zip(boxes, boxes[1:]):
            assert lower.y1 < upper.y0, (upper, lower)  # stacked top to bottom, apart
        plt.close(figure)


# --- the forecast task's process settings ------------------------------------------------------------------

FAULTS_SCRIPT = """
import resource, sys
import pandas as pd
import torch
from kronos_tasks import KronosPredictor
from kronos_tasks.model.presets import random_model, random_tokenizer
from kronos_tasks.pipeline import runtime

torch.set_num_threads(1)
if sys.argv[1] == "reuse":
    assert runtime.reuse_freed_memory()
bars = pd.read_csv(sys.argv[2], parse_dates=["timestamps"])
starts = range(0, 30 * 64, 30)
predictor = KronosPredictor(random_model("tiny"), random_tokenizer("tiny"), device="cpu")
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
predictor.predict_batch(
    [bars.iloc[s : s + 200][["open", "high", "low", "close", "volume", "amount"]] for s in starts],
    [bars["timestamps"].iloc[s : s + 200] for s in starts],
    [bars["timestamps"].iloc[s + 200 : s + 224] for s in starts],
    24, sample_count=16, seed=1, verbose=False,
)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the setting is glibc's (Linux); elsewhere nothing changes")
def test_freed_decoding_memory_is_reused_instead_of_faulted_in_again():
    """64 forecasts of 16 paths in a fresh process: glibc's default thresholds return the decoding loop's
    blocks to the kernel and fault them in again (about 200,000 minor page faults here); with
    ``reuse_freed_memory`` the process keeps them (about 13,000)."""
    import subprocess

    def faults(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", FAULTS_SCRIPT, mode, str(SAMPLE_DATA / "a_share_5min.csv")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return int(done.stdout.split()[-1])

    default, reused = faults("default"), faults("reuse")
    assert reused * 4 < default, (reused, default)
