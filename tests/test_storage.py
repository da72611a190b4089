"""The forecasts database on SQLite and PostgreSQL: migrations, idempotent ingestion, atomic run writes."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from conftest import FEATURES, SAMPLE_DATA, create_postgres_database
from kronos_tasks.pipeline.ingest import ingest_paths
from kronos_tasks.storage import (
    bar_count,
    current_revision,
    downgrade,
    get_run,
    instrument,
    make_engine,
    persist_run,
    read_bars,
    upgrade,
)
from kronos_tasks.storage.db import table_names
from kronos_tasks.storage.models import Base, Forecast, StagedForecastChunk, SymbolFailure

UTC = timezone.utc


def test_migrations_upgrade_downgrade_and_match_the_models(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    assert current_revision(engine) == "0005"
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "version_table": "kronos_alembic_version"}
        )
        assert compare_metadata(context, Base.metadata) == []
    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert not {"bars", "forecasts", "forecast_runs"} & table_names(engine)
    upgrade(engine)
    upgrade(engine)  # idempotent
    assert {"bars", "forecasts", "forecast_runs", "symbol_failures", "forecast_scores"} <= table_names(engine)
    engine.dispose()


def test_tasks_refuse_a_database_behind_the_code_without_reading_alembic(db_url):
    from alembic.script import ScriptDirectory

    from kronos_tasks.storage import DatabaseError, require_schema
    from kronos_tasks.storage.db import MIGRATIONS, SCHEMA_HEAD

    assert SCHEMA_HEAD == ScriptDirectory(str(MIGRATIONS)).get_current_head()  # a new migration moves both
    engine = make_engine(db_url)
    downgrade(engine, "base")
    with pytest.raises(DatabaseError, match=r"at revision None, the code needs 0005: run `kronos-flow init`"):
        require_schema(engine)
    upgrade(engine, "0004")
    with pytest.raises(DatabaseError, match=r"at revision 0004, the code needs 0005"):
        require_schema(engine)
    upgrade(engine)
    require_schema(engine)
    engine.dispose()


def test_the_staging_upgrade_refuses_to_drop_rows_of_runs_in_flight(db_url):
    from sqlalchemy import text

    from kronos_tasks.storage import clear_staging, stage_forecasts

    engine = make_engine(db_url)
    downgrade(engine, "base")
    upgrade(engine, "0004")
    row = {k: v for k, v in forecast_rows("in-flight", 11.0)[0].items()}
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO staged_forecasts (run_id, batch, symbol, feature, step, interval, origin_ts, target_ts, "
                "last_value, mean, quantiles, prob_above_last, series_seed, staged_at) VALUES (:run_id, 'b', :symbol, "
                ":feature, :step, :interval, :origin_ts, :target_ts, :last_value, :mean, '{}', 0.5, 1, :origin_ts)"
            ),
            row,
        )
    with pytest.raises(RuntimeError, match="1 run.*in-flight.*let them finish"):
        upgrade(engine)
    assert current_revision(engine) == "0004"  # nothing changed: the staged row is still there
    with engine.begin() as connection:
        assert connection.execute(text("SELECT count(*) FROM staged_forecasts")).scalar_one() == 1
        connection.execute(text("DELETE FROM staged_forecasts"))
    upgrade(engine)
    assert current_revision(engine) == "0005"
    stage_forecasts(engine, "in-flight", "b", forecast_rows("in-flight", 11.0))  # and the way back
    with pytest.raises(RuntimeError, match="staged_forecast_chunks holds rows of 1 run.*before downgrading"):
        downgrade(engine, "0004")
    assert current_revision(engine) == "0005"
    clear_staging(engine, "in-flight")
    downgrade(engine, "0004")
    assert current_revision(engine) == "0004"
    engine.dispose()


def test_sample_files_ingest_unchanged_and_twice_leaves_the_same_rows(engine):
    first = ingest_paths(engine, [SAMPLE_DATA / "a_share_5min.csv"], exchange="XSHG")
    ingest_paths(engine, [SAMPLE_DATA / "GOOG_1d.csv"], exchange="XNYS")
    assert first.written == {"a_share": 2500} and not first.failed
    assert bar_count(engine) == 4648
    again = ingest_paths(engine, [SAMPLE_DATA / "a_share_5min.csv"], exchange="XSHG")
    assert again.written == {"a_share": 2500}
    assert bar_count(engine) == 4648
    bars = read_bars(engine, "a_share", "5min", limit=2)
    assert bars["ts"].tolist() == [
        pd.Timestamp("2024-08-29 03:25", tz="UTC"),
        pd.Timestamp("2024-08-29 03:30", tz="UTC"),
    ]
    for limit in (0, -3):  # a negative LIMIT means "no limit" to some databases: refused, never sent
        with pytest.raises(ValueError, match="limit must be a positive integer"):
            read_bars(engine, "a_share", "5min", limit=limit)
    meta = instrument(engine, "GOOG", "1d")
    assert (meta.exchange, meta.timezone) == ("XNYS", "America/New_York")


def test_a_vendor_correction_replaces_the_stored_bar(engine, tmp_path):
    frame = pd.read_csv(SAMPLE_DATA / "GOOG_1d.csv", index_col=0).iloc[:10]
    frame.index.name = "Date"
    frame.to_csv(tmp_path / "GOOG_1d.csv")
    ingest_paths(engine, [tmp_path / "GOOG_1d.csv"], exchange="XNYS")
    frame.loc[frame.index[3], "Close"] = 108.25  # within the bar's high and low
    frame.to_csv(tmp_path / "GOOG_1d.csv")
    ingest_paths(engine, [tmp_path / "GOOG_1d.csv"], exchange="XNYS")
    bars = read_bars(engine, "GOOG", "1d")
    assert len(bars) == 10 and bars["close"].iloc[3] == 108.25


def test_bad_rows_and_bad_symbols_fail_alone(engine, tmp_path):
    shutil.copy(SAMPLE_DATA / "a_share_5min.csv", tmp_path / "GOOD_5min.csv")
    clean = pd.read_csv(SAMPLE_DATA / "a_share_5min.csv").iloc[:100]
    rows = clean.copy()
    rows.loc[10, "close"] = -1.0  # row 11
    rows.loc[20, "volume"] = float("nan")  # row 21
    rows.to_csv(tmp_path / "MIXED_5min.csv", index=False)
    pd.concat([clean.iloc[:50], clean.iloc[40:45], clean.iloc[50:]]).to_csv(tmp_path / "UNSORTED_5min.csv", index=False)
    (tmp_path / "BROKEN.csv").write_text("this,is\nnot,bars\n")
    result = ingest_paths(engine, [tmp_path], exchange="XSHG")
    assert result.written["GOOD"] == 2500 and result.written["MIXED"] == 98
    assert "UNSORTED" in result.failed and "decreasing_timestamp" in result.failed["UNSORTED"]
    assert "BROKEN.csv" in result.failed and "no time column" in result.failed["BROKEN.csv"]
    counts = result.report.counts()
    assert counts["non_positive_price"] == 1 and counts["non_finite"] == 1
    assert bar_count(engine) == 2598
    report = result.render()
    assert "MIXED row 11" in report and "MIXED row 21" in report and "FAILED UNSORTED" in report


def run_row(run_id: str, **changes) -> dict:
    row = {
        "run_id": run_id,
        "kind": "daily",
        "dag_id": "kronos_daily_forecast",
        "logical_date": datetime(2024, 8, 29, tzinfo=UTC),
        "status": "success",
        "started_at": datetime(2024, 8, 29, 21, tzinfo=UTC),
        "finished_at": datetime(2024, 8, 29, 21, 5, tzinfo=UTC),
        "lookback": 384,
        "pred_len": 2,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 0.9,
        "sample_count": 8,
        "quantiles": [0.1, 0.5, 0.9],
        "seed": 2**62 + 1,
        "max_context": 512,
        "batch_size": 32,
        "device": "cpu",
        "model_name": "kronos-model",
        "model_version": "1",
        "model_sha256": "a" * 64,
        "tokenizer_name": "kronos-tokenizer",
        "tokenizer_version": "1",
        "tokenizer_sha256": "b" * 64,
        "model_alias": "champion",
        "mlflow_run_id": None,
        "data_window_hash": "c" * 64,
        "code_version": "0.1.0",
        "symbols_ok": 1,
        "symbols_failed": 1,
        "bars_per_second": 10.0,
        "timings": {"forecast": 1.5},
        "extra": {},
    }
    row.update(changes)
    return row


def forecast_rows(run_id: str, mean: float) -> list[dict]:
    return [
        {
            "run_id": run_id,
            "symbol": "AAA",
            "feature": feature,
            "step": step,
            "interval": "1d",
            "origin_ts": datetime(2024, 8, 29, 4, tzinfo=UTC),
            "target_ts": datetime(2024, 8, 29 + step, 4, tzinfo=UTC),
            "last_value": 10.0,
            "mean": mean,
            "quantiles": {"0.1": mean - 1, "0.5": mean, "0.9": mean + 1},
            "prob_above_last": 0.5,
            "series_seed": 2**62 + 7,
        }
        for feature in ("open", "close")
        for step in (1, 2)
    ]


def count(engine, table, run_id):
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table).where(table.run_id == run_id)).scalar_one()


def test_rerunning_a_run_replaces_its_rows(engine):
    failure = [
        {
            "run_id": "r1",
            "symbol": "BBB",
            "stage": "window",
            "reason": "too few bars",
            "recorded_at": datetime(2024, 8, 29, tzinfo=UTC),
        }
    ]
    persist_run(engine, run_row("r1"), forecast_rows("r1", 11.0), failure)
    persist_run(engine, run_row("r1", symbols_failed=0), forecast_rows("r1", 12.0), [])
    assert count(engine, Forecast, "r1") == 4 and count(engine, SymbolFailure, "r1") == 0
    with engine.connect() as connection:
        means = connection.execute(
            select(Forecast.mean, Forecast.quantiles, Forecast.target_ts).where(Forecast.run_id == "r1")
        ).all()
    assert {m for m, _, _ in means} == {12.0}
    assert means[0][1] == {"0.1": 11.0, "0.5": 12.0, "0.9": 13.0}
    assert means[0][2].tzinfo is not None and means[0][2].utcoffset().total_seconds() == 0
    run = get_run(engine, "r1")
    assert run.symbols_failed == 0 and run.seed == 2**62 + 1 and run.quantiles == [0.1, 0.5, 0.9]


def test_a_failed_write_leaves_the_stored_run_intact(engine):
    persist_run(engine, run_row("r2"), forecast_rows("r2", 11.0), [])
    broken = forecast_rows("r2", 99.0)
    broken[-1]["mean"] = None  # violates NOT NULL after the old rows were deleted in the same transaction
    with pytest.raises(IntegrityError):
        persist_run(engine, run_row("r2", status="partial"), broken, [])
    assert count(engine, Forecast, "r2") == 4
    assert get_run(engine, "r2").status == "success"
    with engine.connect() as connection:
        assert set(connection.execute(select(Forecast.mean).where(Forecast.run_id == "r2")).scalars()) == {11.0}


def test_naive_timestamps_are_refused(engine):
    with pytest.raises(Exception, match="naive timestamp"):
        persist_run(engine, run_row("r3", started_at=datetime(2024, 8, 29)), [], [])


def staged_rows(engine, run_id: str) -> int:
    with engine.connect() as connection:
        query = select(func.coalesce(func.sum(StagedForecastChunk.rows), 0)).where(StagedForecastChunk.run_id == run_id)
        return connection.execute(query).scalar_one()


def test_a_run_with_nothing_staged_persists_without_forecasts(engine):
    assert persist_run(engine, run_row("r8"), None, []) == 0  # every symbol failed: no shard staged a chunk
    assert count(engine, Forecast, "r8") == 0


def test_a_staged_chunk_that_cannot_be_read_fails_the_persist_and_keeps_the_stored_run(engine):
    import pyarrow as pa
    from sqlalchemy import update

    from kronos_tasks.storage import stage_forecasts

    rows = forecast_rows("r7", 11.0)
    stage_forecasts(engine, "r7", "batch-0", rows[:2])
    stage_forecasts(engine, "r7", "batch-1", rows[2:])
    assert persist_run(engine, run_row("r7"), None, []) == 4
    stage_forecasts(engine, "r7", "batch-0", [dict(r, mean=50.0) for r in rows[:2]])  # a re-run of the same date
    stage_forecasts(engine, "r7", "batch-1", [dict(r, mean=50.0) for r in rows[2:]])
    with engine.begin() as connection:  # its second chunk damaged (read after the first is copied)
        damaged = StagedForecastChunk.run_id == "r7", StagedForecastChunk.batch == "batch-1"
        connection.execute(update(StagedForecastChunk).where(*damaged).values(arrow=b"not an Arrow stream"))
    with pytest.raises(pa.ArrowInvalid):
        persist_run(engine, run_row("r7"), None, [])
    with engine.connect() as connection:
        means = connection.execute(select(Forecast.mean).where(Forecast.run_id == "r7")).scalars().all()
    assert sorted(means) == sorted(r["mean"] for r in rows)  # the first run's rows, none of the re-run's
    assert staged_rows(engine, "r7") == 4  # and the re-run's chunks are still staged for a retry


def test_staged_batches_move_into_the_run_atomically(engine):
    from kronos_tasks.storage import clear_staging, stage_forecasts

    rows = forecast_rows("r4", 11.0)
    stage_forecasts(engine, "r4", "batch-0", rows[:1])
    stage_forecasts(engine, "r4", "batch-0", rows[1:2], append=True)  # a second chunk of the same attempt
    stage_forecasts(engine, "r4", "batch-1", [dict(r, mean=50.0) for r in rows[2:]])
    stage_forecasts(engine, "r4", "batch-1", rows[2:])  # a retried batch replaces what it staged
    assert staged_rows(engine, "r4") == 4
    assert persist_run(engine, run_row("r4"), None, []) == 4
    assert staged_rows(engine, "r4") == 0 and count(engine, Forecast, "r4") == 4
    with engine.connect() as connection:
        columns = (Forecast.feature, Forecast.step, Forecast.mean, Forecast.quantiles, Forecast.target_ts)
        stored = connection.execute(select(*columns).where(Forecast.run_id == "r4")).all()
    assert sorted(stored) == sorted((r["feature"], r["step"], r["mean"], r["quantiles"], r["target_ts"]) for r in rows)
    stage_forecasts(engine, "r4", "batch-0", rows[:1])
    clear_staging(engine, "r4")
    assert staged_rows(engine, "r4") == 0


def test_staged_rows_with_naive_timestamps_are_refused_when_staged(engine):
    from kronos_tasks.storage import stage_forecasts

    row = forecast_rows("r5", 11.0)[0]
    with pytest.raises(ValueError, match="origin_ts: naive timestamps"):
        stage_forecasts(engine, "r5", "batch-0", [dict(row, origin_ts=row["origin_ts"].replace(tzinfo=None))])
    assert staged_rows(engine, "r5") == 0


def test_inserted_rows_take_the_values_every_row_shares_over_their_own(engine):
    from kronos_tasks.storage.db import insert_rows

    persist_run(engine, run_row("r8"), [], [])
    rows = forecast_rows("r7", 11.0)
    with engine.begin() as connection:
        assert insert_rows(connection, Forecast.__table__, rows, {"run_id": "r8", "interval": "5min"}) == 4
    columns = (Forecast.run_id, Forecast.interval, Forecast.feature, Forecast.step, Forecast.quantiles)
    with engine.connect() as connection:
        stored = connection.execute(select(*columns)).all()
    assert sorted(stored) == sorted(("r8", "5min", r["feature"], r["step"], r["quantiles"]) for r in rows)


def test_rows_given_as_an_arrow_table_are_stored_as_the_same_rows_given_as_dicts(engine):
    import pyarrow as pa

    from kronos_tasks.storage.db import insert_rows, insert_table

    rows = forecast_rows("r9", 11.0)
    awkward = [0.1 + 0.2, 1e-7, 1e20, -0.0]  # floats whose text must read back to the same value
    for row, symbol, value in zip(rows, ['A,"B', "", "C\nD", "E"], awkward):  # text CSV must quote
        row.update(symbol=symbol, mean=value, quantiles={"0.1": value, "0.5": 3.0, "0.9": 1e-300})
        row["target_ts"] = row["target_ts"].astimezone(timezone(pd.Timedelta(hours=-4)))  # any zone, stored as UTC
    rows[0].update(calibrated_quantiles={"0.1": 1.0, "0.5": 2.0, "0.9": 3.0}, calibrated_prob_above_last=0.25)
    for row in rows[1:]:
        row.update(calibrated_quantiles=None, calibrated_prob_above_last=None)
    table = pa.Table.from_pylist([{k: v for k, v in row.items() if k != "run_id"} for row in rows])
    for run_id in ("r9-table", "r9-dicts"):
        persist_run(engine, run_row(run_id), [], [])
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":  # text without an offset would be read in the session's zone
            connection.exec_driver_sql("SET LOCAL TIME ZONE 'Asia/Tokyo'")
        assert insert_table(connection, Forecast.__table__, table, {"run_id": "r9-table"}) == 4
        insert_rows(connection, Forecast.__table__, rows, {"run_id": "r9-dicts"})
    columns = [c for c in Forecast.__table__.columns if c.name != "run_id"]
    with engine.connect() as connection:
        stored = {
            run_id: sorted(connection.execute(select(*columns).where(Forecast.run_id == run_id)).all())
            for run_id in ("r9-table", "r9-dicts")
        }
    assert stored["r9-table"] == stored["r9-dicts"] and len(stored["r9-table"]) == 4
    by_symbol = {row.symbol: row for row in stored["r9-table"]}
    assert [by_symbol[row["symbol"]].mean for row in rows] == awkward
    assert by_symbol['A,"B'].quantiles == {"0.1": 0.1 + 0.2, "0.5": 3.0, "0.9": 1e-300}
    assert [type(v) for row in stored["r9-table"] for v in row.quantiles.values()] == [float] * 12  # 3.0, -0.0 too
    assert by_symbol['A,"B'].calibrated_quantiles == {"0.1": 1.0, "0.5": 2.0, "0.9": 3.0}
    assert by_symbol[""].calibrated_quantiles is None and by_symbol[""].calibrated_prob_above_last is None
    assert by_symbol["E"].target_ts == rows[3]["target_ts"] and by_symbol["E"].target_ts.utcoffset() == pd.Timedelta(0)


def test_an_arrow_table_with_naive_timestamps_is_refused(engine):
    import pyarrow as pa

    from kronos_tasks.storage.db import insert_table

    persist_run(engine, run_row("r10"), [], [])
    row = {k: v for k, v in forecast_rows("r10", 11.0)[0].items() if k != "run_id"}
    table = pa.Table.from_pylist([dict(row, origin_ts=row["origin_ts"].replace(tzinfo=None))])
    with pytest.raises(Exception, match="naive timestamp"), engine.begin() as connection:
        insert_table(connection, Forecast.__table__, table, {"run_id": "r10"})


def test_a_failed_persist_from_staging_keeps_the_stored_run_and_the_staged_rows(engine):
    from kronos_tasks.storage import stage_forecasts

    persist_run(engine, run_row("r6"), forecast_rows("r6", 11.0), [])
    stage_forecasts(engine, "r6", "shard-0000", forecast_rows("r6", 12.0))
    bad_failure = {"run_id": "r6", "symbol": "BBB", "stage": "window", "reason": None, "recorded_at": datetime.now(UTC)}
    with pytest.raises(IntegrityError):  # the failures insert comes after the staged rows moved
        persist_run(engine, run_row("r6", status="partial"), None, [bad_failure])
    assert get_run(engine, "r6").status == "success" and count(engine, Forecast, "r6") == 4
    with engine.connect() as connection:
        assert set(connection.execute(select(Forecast.mean).where(Forecast.run_id == "r6")).scalars()) == {11.0}
    assert staged_rows(engine, "r6") == 4  # still staged: a retried persist finds them
    assert persist_run(engine, run_row("r6", status="partial"), None, []) == 4
    with engine.connect() as connection:
        assert set(connection.execute(select(Forecast.mean).where(Forecast.run_id == "r6")).scalars()) == {12.0}


def test_run_items_are_sharded_read_by_key_and_record_failures(engine):
    from kronos_tasks.data.watchlist import WatchItem
    from kronos_tasks.storage import fail_items, item_counts, item_failures, plan_items, reset_shard, shard_items

    upgrade(engine)
    items = [WatchItem(f"S{i}", "XNYS", "1d", None, "America/New_York") for i in range(5)]
    plan_items(engine, "r1", items, shards=2)
    assert [i.symbol for i in shard_items(engine, "r1", 0)] == ["S0", "S1", "S2"]
    assert shard_items(engine, "r1", 1) == items[3:]
    fail_items(engine, "r1", {"S1": ("ingest", "no file"), "S4": ("stale", "old")})
    assert [i.symbol for i in shard_items(engine, "r1", 0)] == ["S0", "S2"]
    assert item_failures(engine, "r1") == [("S1", "ingest", "no file"), ("S4", "stale", "old")]
    assert item_counts(engine, "r1") == (5, 2)
    reset_shard(engine, "r1", 1, ("stale",))  # a retried forecast task starts clean
    assert item_failures(engine, "r1") == [("S1", "ingest", "no file")]
    plan_items(engine, "r1", items[:2], shards=1)  # a re-run's plan replaces the entries
    assert item_counts(engine, "r1") == (2, 0)


def test_batched_window_reads_equal_one_read_per_symbol(engine):
    from kronos_tasks.data.watchlist import WatchItem
    from kronos_tasks.storage import window_arrays, window_starts

    def read_windows(engine, items, end, limit):  # the arrays as the frames read_bars returns
        return {
            item.symbol: pd.DataFrame({"ts": times, **dict(zip(FEATURES, values))})
            for item, times, values in window_arrays(engine, items, end, limit)
        }

    ingest_paths(engine, [SAMPLE_DATA / "a_share_5min.csv"], exchange="XSHG")
    ingest_paths(engine, [SAMPLE_DATA / "GOOG_1d.csv"], exchange="XNYS")
    items = [WatchItem("GOOG", "XNYS", "1d"), WatchItem("a_share", "XSHG", "5min"), WatchItem("NONE", "XNYS", "1d")]
    end = datetime(2013, 1, 2, tzinfo=UTC)
    found = read_windows(engine, items, end, 100)
    assert set(found) == {"GOOG"}  # a_share starts in 2024, NONE has no bars
    assert read_windows(engine, items[1:], end, 100) == {}  # a read where no entry has bars
    pd.testing.assert_frame_equal(found["GOOG"], read_bars(engine, "GOOG", "1d", end=end, limit=100))
    everything = read_windows(engine, items, end, 10**6)  # every stored bar, in time order
    pd.testing.assert_frame_equal(everything["GOOG"], read_bars(engine, "GOOG", "1d", end=end))
    later = read_windows(engine, items, datetime(2030, 1, 1, tzinfo=UTC), 64)
    for item in items[:2]:
        pd.testing.assert_frame_equal(later[item.symbol], read_bars(engine, item.symbol, item.interval, limit=64))
    starts = window_starts(engine, items, datetime(2030, 1, 1, tzinfo=UTC), 64)  # where each window starts
    assert starts == {symbol: frame["ts"].iloc[0] for symbol, frame in later.items()}
    assert window_starts(engine, items[1:], end, 100) == {}


def test_window_arrays_arrive_as_numpy_arrays_and_arrays_with_nulls_are_refused(postgres_admin_url):
    from kronos_tasks.storage import make_engine
    from kronos_tasks.storage.items import _array_loaders

    url, drop = create_postgres_database(postgres_admin_url)
    engine = make_engine(url)
    try:
        with engine.connect() as connection, connection.connection.driver_connection.cursor(binary=True) as cursor:
            _array_loaders(cursor)
            values, stamps, empty = cursor.execute(
                "SELECT ARRAY[1.5, -2.25, 1e300]::float8[], ARRAY[-1, 9007199254740993]::int8[], '{}'::float8[]"
            ).fetchone()
            with pytest.raises(ValueError, match="without NULLs"):
                cursor.execute("SELECT ARRAY[1.0, NULL]::float8[]").fetchone()
    finally:
        engine.dispose()
        drop()
    assert values.dtype == np.float64 and values.tolist() == [1.5, -2.25, 1e300]
    assert stamps.dtype == np.int64 and stamps.tolist() == [-1, 9007199254740993]  # exact beyond float precision
    assert empty.dtype == np.float64 and empty.shape == (0,)


def test_stored_times_become_the_same_utc_instants_to_the_microsecond():
    from zoneinfo import ZoneInfo

    from kronos_tasks.storage.models import utc_index

    aware = [
        datetime(2024, 3, 10, 1, 59, 59, 999_999, tzinfo=ZoneInfo("America/New_York")),  # before the DST jump
        datetime(2024, 3, 10, 3, 0, tzinfo=ZoneInfo("America/New_York")),
        datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC),  # before the epoch
    ]
    got = utc_index(aware)
    assert str(got.tz) == "UTC"
    assert [t.value for t in got] == [pd.Timestamp(t).tz_convert("UTC").value for t in aware]
    assert list(got.as_unit("us").asi8) == [1710053999999999, 1710054000000000, -500_000]
    naive = utc_index([datetime(2024, 1, 2, 3, 4, 5, 6)])  # SQLite: stored UTC without a zone
    assert naive[0] == pd.Timestamp("2024-01-02 03:04:05.000006", tz="UTC")
    assert len(utc_index([])) == 0
