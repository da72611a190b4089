"""Storage benchmark: bulk ingestion and forecast writes on SQLite and PostgreSQL.

    python bench/storage.py [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

1. Ingest 500 symbols x 2,000 five-minute bars from 500 CSV files through the real ingest path
   (read, normalise, validate, upsert), then once more (every bar already stored: updates in place).
2. Write 500 symbols x 128 steps x 6 features of forecasts as the daily DAG does: 16 batches staged,
   then one transaction that moves them into the forecasts table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kronos_tasks.pipeline.ingest import ingest_paths  # noqa: E402
from kronos_tasks.storage import bar_count, make_engine, persist_run, stage_forecasts, upgrade  # noqa: E402

SYMBOLS, BARS, STEPS = 500, 2000, 128
FEATURES = ["open", "high", "low", "close", "volume", "amount"]


def write_files(folder: Path) -> None:
    rng = np.random.default_rng(0)
    times = pd.date_range("2024-01-02 09:35", periods=BARS, freq="5min")
    for n in range(SYMBOLS):
        close = 10 * np.exp(np.cumsum(rng.normal(0, 0.002, BARS)))
        open_ = np.r_[close[0], close[:-1]]
        spread = np.abs(rng.normal(0, 0.002, BARS)) * close
        volume = rng.integers(100, 10000, BARS).astype(float)
        pd.DataFrame(
            {
                "timestamps": times,
                "open": open_,
                "high": np.maximum(open_, close) + spread,
                "low": np.minimum(open_, close) - spread,
                "close": close,
                "volume": volume,
                "amount": volume * close,
            }
        ).to_csv(folder / f"S{n:03d}_5min.csv", index=False)


def forecast_rows(run_id: str, symbols: range) -> list[dict]:
    origin = datetime(2024, 3, 1, 7, tzinfo=timezone.utc)
    return [
        {
            "run_id": run_id,
            "symbol": f"S{n:03d}",
            "feature": feature,
            "step": step,
            "interval": "5min",
            "origin_ts": origin,
            "target_ts": origin + timedelta(minutes=5 * step),
            "last_value": 10.0,
            "mean": 10.0 + step * 1e-3,
            "quantiles": {"0.1": 9.9, "0.5": 10.0, "0.9": 10.1},
            "prob_above_last": 0.5,
            "series_seed": n,
        }
        for n in symbols
        for feature in FEATURES
        for step in range(1, STEPS + 1)
    ]


def run_row(run_id: str) -> dict:
    now = datetime.now(timezone.utc)
    return {
        "run_id": run_id,
        "kind": "bench",
        "dag_id": None,
        "logical_date": now,
        "status": "success",
        "started_at": now,
        "finished_at": now,
        "lookback": 384,
        "pred_len": STEPS,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 0.9,
        "sample_count": 16,
        "quantiles": [0.1, 0.5, 0.9],
        "seed": 0,
        "max_context": 512,
        "batch_size": 32,
        "device": "cpu",
        "model_name": "m",
        "model_version": "1",
        "model_sha256": "0" * 64,
        "tokenizer_name": "t",
        "tokenizer_version": "1",
        "tokenizer_sha256": "0" * 64,
        "model_alias": None,
        "mlflow_run_id": None,
        "data_window_hash": None,
        "code_version": "bench",
        "symbols_ok": SYMBOLS,
        "symbols_failed": 0,
        "bars_per_second": None,
        "timings": {},
        "extra": {},
    }


def measure(url: str, files: Path) -> dict:
    engine = make_engine(url)
    upgrade(engine)
    out = {}
    start = time.perf_counter()
    result = ingest_paths(engine, [files], exchange="XSHG")
    out["ingest_s"] = time.perf_counter() - start
    assert not result.failed and bar_count(engine) == SYMBOLS * BARS, result.render()[:500]
    start = time.perf_counter()
    ingest_paths(engine, [files], exchange="XSHG")
    out["reingest_s"] = time.perf_counter() - start
    assert bar_count(engine) == SYMBOLS * BARS
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    for b in range(0, SYMBOLS, 32):
        stage_forecasts(engine, run_id, f"batch-{b // 32:04d}", forecast_rows(run_id, range(b, min(SYMBOLS, b + 32))))
    out["stage_s"] = time.perf_counter() - start
    start = time.perf_counter()
    written = persist_run(engine, run_row(run_id), None, [])
    out["persist_s"] = time.perf_counter() - start
    assert written == SYMBOLS * STEPS * len(FEATURES)
    engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--postgres",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="admin URL of a PostgreSQL server; a scratch database is created and dropped",
    )
    args = parser.parse_args()
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    with tempfile.TemporaryDirectory() as folder:
        files = Path(folder) / "bars"
        files.mkdir()
        write_files(files)
        results = {"SQLite": measure(f"sqlite:///{folder}/bench.db", files)}
        name = f"kronos_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = make_url(args.postgres).set(database=name).render_as_string(hide_password=False)
            results["PostgreSQL"] = measure(url, files)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(
        f"| database | ingest {SYMBOLS} x {BARS} bars (files to rows) | again (all updates) | "
        f"stage {SYMBOLS} x {STEPS} x 6 forecasts (16 batches) | persist the run (one transaction) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for database, r in results.items():
        print(
            f"| {database} | {r['ingest_s']:.1f} s | {r['reingest_s']:.1f} s | {r['stage_s']:.1f} s | "
            f"{r['persist_s']:.1f} s |"
        )


if __name__ == "__main__":
    main()
