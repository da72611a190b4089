"""Reading vendor layouts, validation rules and policies, intervals and trading calendars."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import SAMPLE_DATA
from kronos_tasks.data import DataError, Interval, exchange_timezone, future_timestamps, read_series, validate
from kronos_tasks.data.schema import SYMBOL_MAX
from kronos_tasks.data.validation import RULES, Finding, Report, check_policies

BARS = pd.DataFrame(
    {
        "timestamps": pd.date_range("2024-03-04 09:35", periods=6, freq="5min").astype(str),
        "open": [10.0, 10.1, 10.2, 10.1, 10.0, 10.2],
        "high": [10.2, 10.3, 10.3, 10.2, 10.2, 10.4],
        "low": [9.9, 10.0, 10.1, 10.0, 9.9, 10.1],
        "close": [10.1, 10.2, 10.1, 10.0, 10.2, 10.3],
        "volume": [100.0, 120, 90, 80, 110, 130],
        "amount": [1010.0, 1224, 909, 800, 1122, 1339],
    }
)


def write(tmp_path, name, frame, **kwargs):
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path, **kwargs)
    else:
        frame.to_csv(path, index=False, **kwargs)
    return path


def test_both_sample_files_read_unchanged():
    (a_share,) = read_series(SAMPLE_DATA / "a_share_5min.csv", "Asia/Shanghai")
    assert (a_share.symbol, str(a_share.interval), len(a_share.bars)) == ("a_share", "5min", 2500)
    assert a_share.bars["ts"].iloc[0] == pd.Timestamp("2024-06-18 03:15", tz="UTC")  # 11:15 in Shanghai
    (goog,) = read_series(SAMPLE_DATA / "GOOG_1d.csv", "America/New_York")
    assert (goog.symbol, str(goog.interval), len(goog.bars)) == ("GOOG", "1d", 2148)
    first = goog.bars.iloc[0]
    assert first["ts"] == pd.Timestamp("2004-08-19 04:00", tz="UTC")
    assert first["amount"] == pytest.approx(22351900 * (100 + 104.06 + 95.96 + 100.34) / 4)
    assert any("amount = volume" in note for note in goog.notes)


@pytest.mark.parametrize(
    "rename",
    [
        {
            "timestamps": "Date",
            "open": "Open",
            "high": "High",
            "low": "Low",
            "close": "Close",
            "volume": "Vol",
            "amount": "Turnover",
        },
        {"timestamps": "Datetime", "volume": "VOL", "amount": "AMT"},
        {"timestamps": "time"},
        {"timestamps": "TIMESTAMP"},
        {"timestamps": ""},  # an unnamed index column
    ],
)
def test_common_layouts_read_without_editing(tmp_path, rename):
    path = write(tmp_path, "XYZ_5min.csv", BARS.rename(columns=rename))
    (series,) = read_series(path)
    assert series.symbol == "XYZ" and str(series.interval) == "5min"
    assert series.bars["close"].tolist() == BARS["close"].tolist()
    assert series.bars["amount"].tolist() == BARS["amount"].tolist()


def test_separate_date_and_time_columns_and_descending_rows(tmp_path):
    frame = BARS.assign(date=BARS["timestamps"].str[:10], time=BARS["timestamps"].str[11:]).drop(columns="timestamps")
    path = write(tmp_path, "ABC.csv", frame.iloc[::-1])
    (series,) = read_series(path, interval=Interval.parse("5min"))
    assert series.bars["ts"].is_monotonic_increasing
    assert series.bars["close"].tolist() == BARS["close"].tolist()
    assert any("descending" in note for note in series.notes)


def test_symbol_column_splits_one_file_and_parquet_index(tmp_path):
    both = pd.concat([BARS.assign(Ticker="AAA"), BARS.assign(Ticker="BBB", close=BARS["close"] * 2)])
    path = write(tmp_path, "many.csv", both)
    series = read_series(path)
    assert [s.symbol for s in series] == ["AAA", "BBB"]
    assert series[1].bars["close"].tolist() == (BARS["close"] * 2).tolist()
    indexed = BARS.assign(timestamps=pd.to_datetime(BARS["timestamps"])).set_index("timestamps")
    (parquet,) = read_series(write(tmp_path, "PQ_5min.parquet", indexed), "America/New_York")
    assert parquet.bars["ts"].iloc[0] == pd.Timestamp("2024-03-04 14:35", tz="UTC")


def test_missing_volume_zeroes_volume_and_amount(tmp_path):
    (series,) = read_series(write(tmp_path, "NV_5min.csv", BARS.drop(columns=["volume", "amount"])))
    assert (series.bars["volume"] == 0).all() and (series.bars["amount"] == 0).all()


def test_unreadable_layouts_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"NOCLOSE_5min.csv: no 'close' column"):
        read_series(write(tmp_path, "NOCLOSE_5min.csv", BARS.drop(columns="close")))
    with pytest.raises(DataError, match=r"no time column"):
        read_series(write(tmp_path, "NOTIME.csv", BARS.rename(columns={"timestamps": "when"})))
    (tmp_path / "EMPTY.csv").write_text("timestamps,open,high,low,close\n")
    with pytest.raises(DataError, match="holds no rows"):
        read_series(tmp_path / "EMPTY.csv")


def planted(tmp_path):
    """A file with one bad row per rule, rows counted from 1 after the header."""
    rows = BARS.copy()
    rows = pd.concat([rows, BARS.iloc[:1]], ignore_index=True)  # row 7: duplicate of row 1's time
    rows.loc[1, "close"] = float("nan")  # row 2: non_finite
    rows.loc[2, "low"] = -1.0  # row 3: non_positive_price
    rows.loc[3, "high"] = 9.0  # row 4: high below open/close (and high < low)
    rows.loc[4, "volume"] = -5.0  # row 5: negative volume
    return write(tmp_path, "BAD_5min.csv", rows)


def test_validation_names_symbol_row_and_rule(tmp_path):
    (series,) = read_series(planted(tmp_path))
    kept, report = validate(series.symbol, series.bars, series.interval)
    found = {(f.row, f.rule) for f in report.findings}
    assert {
        (2, "non_finite"),
        (3, "non_positive_price"),
        (4, "high_below_open_close"),
        (5, "negative_volume"),
        (7, "duplicate_timestamp"),
        (7, "decreasing_timestamp"),
    } <= found
    counts = report.counts()
    assert counts["non_finite"] == 1 and counts["duplicate_timestamp"] == 1
    # decreasing_timestamp rejects the symbol by default
    assert "BAD" in report.rejected_symbols and "row 7" in report.rejected_symbols["BAD"] and kept.empty
    text = report.render()
    assert "BAD row 2" in text and "non_finite: 1" in text


def test_policies_choose_between_dropping_bars_symbols_and_warning(tmp_path):
    (series,) = read_series(planted(tmp_path))
    kept, report = validate(series.symbol, series.bars, series.interval, policies={"decreasing_timestamp": "warn"})
    assert report.rejected_symbols == {}
    assert sorted(kept["row"]) == [1, 6]  # rows 2-5 dropped, row 7 dropped as a duplicate
    kept, report = validate(
        series.symbol,
        series.bars,
        series.interval,
        policies={"decreasing_timestamp": "warn", "negative_volume": "warn"},
    )
    assert sorted(kept["row"]) == [1, 5, 6]  # row 7 duplicates row 6's time: one bar per time is stored
    with pytest.raises(ValueError, match="policy warn is not allowed for duplicate_timestamp"):
        check_policies({"duplicate_timestamp": "warn"})
    _, report = validate(series.symbol, series.bars, series.interval, policies={"non_finite": "reject_symbol"})
    assert "missing, not a number" in report.rejected_symbols["BAD"]
    with pytest.raises(ValueError, match="unknown validation rule 'nope'"):
        check_policies({"nope": "warn"})
    with pytest.raises(ValueError, match="unknown policy 'drop'"):
        check_policies({"non_finite": "drop"})


def test_off_grid_bars_are_flagged(tmp_path):
    frame = BARS.copy()
    frame.loc[2, "timestamps"] = "2024-03-04 09:46:00"
    (series,) = read_series(write(tmp_path, "GRID_5min.csv", frame))
    kept, report = validate(series.symbol, series.bars, series.interval)
    assert [(f.row, f.rule, f.action) for f in report.findings] == [(3, "off_grid", "warn")]
    assert len(kept) == 6


@pytest.mark.parametrize(
    "text, expected", [("5min", "5min"), ("15m", "15min"), ("60min", "1h"), ("1H", "1h"), ("1d", "1d"), ("1 day", "1d")]
)
def test_intervals_parse_to_one_spelling(text, expected):
    assert str(Interval.parse(text)) == expected


@pytest.mark.parametrize("text", ["5x", "0min", "2d", "1440min", "daily"])
def test_bad_intervals_are_refused(text):
    with pytest.raises(DataError, match="interval"):
        Interval.parse(text)


def test_future_timestamps_follow_the_exchange_calendars():
    (a_share,) = read_series(SAMPLE_DATA / "a_share_5min.csv", "Asia/Shanghai")
    history = a_share.bars["ts"]
    future = future_timestamps(history.iloc[999], 200, Interval.parse("5min"), "XSHG", history.iloc[:1000])
    assert future.equals(pd.DatetimeIndex(history.iloc[1000:1200]))  # lunch breaks and weekends included
    (goog,) = read_series(SAMPLE_DATA / "GOOG_1d.csv", "America/New_York")
    days = goog.bars["ts"]
    future = future_timestamps(days.iloc[999], 300, Interval.parse("1d"), "XNYS", days.iloc[:1000])
    assert future.equals(pd.DatetimeIndex(days.iloc[1000:1300]))  # holidays included
    # Start-labelled bars (09:30 ... 15:55) continue with the next session's 09:30.
    nyse = pd.Series(pd.date_range("2024-07-03 09:30", "2024-07-03 12:55", freq="5min", tz="America/New_York"))
    after = future_timestamps(nyse.iloc[-1], 2, Interval.parse("5min"), "XNYS", nyse.dt.tz_convert("UTC"))
    assert list(after.tz_convert("America/New_York").strftime("%m-%d %H:%M")) == ["07-05 09:30", "07-05 09:35"]
    crypto = future_timestamps(pd.Timestamp("2024-01-06 23:00", tz="UTC"), 2, Interval.parse("1h"), "24/7")
    assert list(crypto) == [pd.Timestamp("2024-01-07 00:00", tz="UTC"), pd.Timestamp("2024-01-07 01:00", tz="UTC")]


def test_each_calendar_is_built_once_however_its_answers_interleave(monkeypatch):
    """Building an exchange calendar costs 0.1-0.3 s. exchange_calendars keeps one per name and replaces it
    when one over other dates is asked for, so asking for the time zone between ranged answers rebuilt the
    default calendar each time (three times per forecast task); freshness and future bar times, asking for
    nearby date ranges, share one calendar over their years."""
    import exchange_calendars

    from kronos_tasks.data import calendars

    kind = type(exchange_calendars.get_calendar("XNYS"))
    built = []
    original = kind.__init__

    def counting(self, *args, **kwargs):
        built.append((kwargs.get("start"), kwargs.get("end")))
        original(self, *args, **kwargs)

    monkeypatch.setattr(kind, "__init__", counting)
    calendars._years_calendar.cache_clear()
    calendars._built_class.cache_clear()
    exchange_calendars.calendar_utils.global_calendar_dispatcher._factory_output_cache.clear()
    days = pd.Series(pd.date_range("2024-06-03 13:30", periods=40, freq="B", tz="UTC"))
    for _ in range(3):
        assert exchange_timezone("XNYS") == "America/New_York"
        future_timestamps(days.iloc[-1], 5, Interval.parse("1d"), "XNYS", days)
        calendars.closed_bars(days.iloc[-1] + pd.Timedelta(days=1), 3, Interval.parse("1d"), "XNYS", days)
    # the default calendar, and one over the years of both date ranges asked for
    assert len(built) == 2 and built[1] == (pd.Timestamp("2024-01-01"), pd.Timestamp("2024-12-31"))


def test_unknown_exchange_says_what_to_use():
    with pytest.raises(DataError, match="unknown exchange 'MOON'.*XNYS"):
        exchange_timezone("MOON")
    assert exchange_timezone("xshg") == "Asia/Shanghai"


def frame_of(times, **columns) -> pd.DataFrame:
    """Bars at ``times`` (UTC) with rows numbered from 1 and plain valid prices unless given."""
    n = len(times)
    values = {"open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 100.0, "amount": 1000.0}
    values.update(columns)
    frame = pd.DataFrame({k: v if isinstance(v, list) else [v] * n for k, v in values.items()})
    frame.insert(0, "ts", pd.to_datetime(times, utc=True))
    frame["row"] = range(1, n + 1)
    return frame


def test_findings_and_reports_read_as_documented():
    stamp = pd.Timestamp("2024-03-04 14:30", tz="UTC")
    assert str(Finding("AAPL", 7, stamp, "off_grid", "warn")) == (
        f"AAPL row 7 (2024-03-04 14:30:00+00:00): {RULES['off_grid']} [off_grid] -> warn"
    )
    assert str(Finding("AAPL", 3, None, "bad_timestamp", "reject_bar")).startswith("AAPL row 3: ")
    assert str(Finding("AAPL", 3, pd.NaT, "bad_timestamp", "reject_bar")).startswith("AAPL row 3: ")

    day = Interval.parse("1d")
    _, first = validate("A", frame_of(["2024-01-02", "2024-01-03"], volume=[100.0, -1.0]), day)
    _, second = validate("B", frame_of(["2024-01-02", "2024-01-03", "2024-01-04"], low=[9.0, 0.0, 9.0]), day)
    second.notes["B"] = ["resumed from 2024-01-02"]
    first.merge(second)
    first.merge(Report(notes={"B": ["one more"]}))
    assert first.bars_in == {"A": 2, "B": 3} and first.bars_kept == {"A": 1, "B": 2}
    assert [f.symbol for f in first.findings] == ["A", "B"]
    lines = first.render(max_findings=1).splitlines()
    assert lines[0] == "2 symbol(s), 5 bars read, 3 kept, 0 symbol(s) rejected"
    assert f"  non_positive_price: 1 ({RULES['non_positive_price']})" in lines
    assert lines[-4:] == [
        "  note B: resumed from 2024-01-02",
        "  note B: one more",
        f"  {first.findings[0]}",
        "  ... 1 more finding(s)",
    ]
    assert "more finding" not in first.render(max_findings=2)


def test_symbol_names_up_to_the_stored_length_pass():
    day = Interval.parse("1d")
    kept, report = validate("S" * SYMBOL_MAX, frame_of(["2024-01-02"]), day)
    assert len(kept) == 1 and report.rejected_symbols == {}
    kept, report = validate("S" * (SYMBOL_MAX + 1), frame_of(["2024-01-02"]), day)
    assert kept.empty and list(kept.columns) == list(frame_of(["2024-01-02"]).columns)
    assert report.rejected_symbols == {
        "S" * (SYMBOL_MAX + 1): f"the symbol is {SYMBOL_MAX + 1} characters long; "
        f"the database holds at most {SYMBOL_MAX}: use a shorter name"
    }
    assert report.bars_kept["S" * (SYMBOL_MAX + 1)] == 0


def test_each_price_and_volume_rule_on_its_own_column():
    day = Interval.parse("1d")
    times = [f"2024-01-{d:02d}" for d in range(2, 8)]
    frame = frame_of(
        times,
        open=[10.0, 0.0, 10.0, 10.0, 10.0, 10.0],
        amount=[1.0, 1.0, -1.0, 1.0, 1.0, 1.0],
        high=[11.0, 11.0, 11.0, 10.2, 11.0, 11.0],
        low=[9.0, 0.0, 9.0, 9.0, 10.6, 9.0],
    )
    kept, report = validate("X", frame, day)
    assert sorted((f.row, f.rule) for f in report.findings) == [
        (2, "non_positive_price"),
        (3, "negative_volume"),
        (4, "high_below_open_close"),
        (5, "low_above_open_close"),
    ]
    assert kept["row"].tolist() == [1, 6] and kept.index.tolist() == [0, 1]
    kept, report = validate("X", frame.iloc[1:2], day)
    assert kept.empty and report.rejected_symbols == {"X": "no bar passed validation"} and report.bars_kept["X"] == 0


def test_warned_bars_out_of_order_are_kept_sorted_by_time():
    frame = frame_of(["2024-01-03", "2024-01-02", "2024-01-04"])
    kept, report = validate("X", frame, Interval.parse("1d"), policies={"decreasing_timestamp": "warn"})
    assert kept["row"].tolist() == [2, 1, 3] and kept.index.tolist() == [0, 1, 2]
    assert [(f.row, f.rule, f.action) for f in report.findings] == [(2, "decreasing_timestamp", "warn")]


def test_a_bar_far_from_every_other_is_isolated_and_not_also_out_of_order():
    day = Interval.parse("1d")
    regular = [f"2024-01-{d:02d}" for d in range(2, 12)]
    kept, report = validate("X", frame_of(["2019-06-03", *regular]), day)  # 4.5 years before the rest
    assert [(f.row, f.rule) for f in report.findings] == [(1, "isolated_timestamp")] and len(kept) == 10
    kept, report = validate("X", frame_of([*regular, "2010-06-03"]), day)  # last in the file, earliest in time
    assert [(f.row, f.rule) for f in report.findings] == [(11, "isolated_timestamp")]
    kept, report = validate("X", frame_of(["2023-03-01", *regular]), day)  # 307 days: a gap, not an outlier
    assert report.findings == [] and len(kept) == 11
    _, report = validate("X", frame_of(["2019-06-03", *regular]), day, policies={"isolated_timestamp": "warn"})
    assert [(f.rule, f.action) for f in report.findings] == [("isolated_timestamp", "warn")]
    _, report = validate("X", frame_of(["2015-01-02", "2024-01-02"]), day)  # two bars: nothing to compare with
    assert report.findings == []
    minutes = pd.date_range("2024-01-02 14:30", periods=20, freq="1min", tz="UTC").tolist()
    late = pd.Timestamp("2025-02-10 14:30", tz="UTC")  # 1.1 years on: over a year, though not 1,000 steps
    _, report = validate("X", frame_of([*minutes, late]), Interval.parse("1min"))
    assert [(f.row, f.rule) for f in report.findings] == [(21, "isolated_timestamp")]


def test_the_grid_is_read_in_the_exchange_time_zone():
    hours = pd.date_range("2024-03-04 04:30", periods=5, freq="1h", tz="UTC")  # 10:00 ... 14:00 in Kolkata
    _, report = validate("X", frame_of(list(hours)), Interval.parse("1h"), timezone="Asia/Kolkata")
    assert report.findings == []
    _, report = validate("X", frame_of(list(hours)), Interval.parse("1h"))
    assert {f.rule for f in report.findings} == {"off_grid"} and len(report.findings) == 5
    quarter = [*pd.date_range("2024-03-04 14:30", periods=4, freq="15min", tz="UTC"), "2024-03-04 15:37:30"]
    _, report = validate(
        "X",
        frame_of([pd.Timestamp(t, tz="UTC") if isinstance(t, str) else t for t in quarter]),
        Interval.parse("15min"),
    )
    assert [(f.row, f.rule) for f in report.findings] == [(5, "off_grid")]


def test_small_prices_zero_volume_and_zero_amount_are_valid_bars():
    day = Interval.parse("1d")
    frame = frame_of(
        ["2024-01-02", "2024-01-03"], open=0.5, high=0.6, low=0.4, close=0.55, volume=[0.0, 0.5], amount=[0.0, 0.2]
    )  # a sub-dollar coin on a quiet day
    kept, report = validate("X", frame, day)
    assert report.findings == [] and len(kept) == 2


def test_rejections_keep_each_finding_time_and_their_first_reason():
    day = Interval.parse("1d")
    frame = frame_of(["2024-01-02", "2024-01-03", "2024-01-04"], volume=[100.0, -1.0, 100.0])
    kept, report = validate("X", frame, day, policies={"negative_volume": "reject_symbol"})
    assert kept.empty and report.bars_kept["X"] == 0
    assert report.rejected_symbols["X"] == f"{RULES['negative_volume']} [negative_volume], first at row 2"
    assert report.findings[0].ts == pd.Timestamp("2024-01-03", tz="UTC")


def test_out_of_order_and_duplicate_bars_are_told_apart():
    day = Interval.parse("1d")
    _, report = validate("X", frame_of(["2024-01-02", "2024-01-03", "2024-01-03"]), day)
    assert [(f.row, f.rule) for f in report.findings] == [(3, "duplicate_timestamp")]  # equal, not earlier
    frame = frame_of(["2024-01-10", "2024-01-02", "2024-01-05"])
    frame.loc[1, "ts"] = pd.NaT  # a bar without a time between them: the third is compared with the first
    _, report = validate("X", frame, day)
    assert sorted((f.row, f.rule) for f in report.findings) == [(2, "bad_timestamp"), (3, "decreasing_timestamp")]


def test_warned_bars_keep_their_columns_and_off_grid_bars_can_be_dropped():
    frame = frame_of(["2024-01-03", "2024-01-02", "2024-01-04"])
    kept, _ = validate("X", frame, Interval.parse("1d"), policies={"decreasing_timestamp": "warn"})
    assert list(kept.columns) == list(frame.columns)
    stamps = pd.date_range("2024-03-04 14:30", periods=4, freq="5min", tz="UTC").tolist()
    stamps[2] = pd.Timestamp("2024-03-04 14:41", tz="UTC")
    kept, report = validate("X", frame_of(stamps), Interval.parse("5min"), policies={"off_grid": "reject_bar"})
    assert kept["row"].tolist() == [1, 2, 4] and [f.rule for f in report.findings] == ["off_grid"]


def test_isolation_limits_at_their_boundaries():
    minutes = pd.date_range("2024-01-02 14:30", periods=20, freq="1min", tz="UTC").tolist()
    last = minutes[-1]
    one_min = Interval.parse("1min")

    def isolated(times, interval=one_min, **policies):
        _, report = validate("X", frame_of(times), interval, policies=policies or None)
        return [f.row for f in report.findings if f.rule == "isolated_timestamp"]

    assert isolated([*minutes, last + pd.Timedelta(hours=20)]) == []  # 1,200 steps, but under a year
    assert isolated([*minutes, last + pd.Timedelta(days=366)]) == []  # exactly the limit is not over it
    assert isolated([*minutes, last + pd.Timedelta(days=366, hours=12)]) == [21]
    days = [f"2024-01-{d:02d}" for d in range(2, 12)]
    assert isolated(["2022-08-20", *days], Interval.parse("1d")) == []  # 500 days: under 1,000 daily steps
    # a warned isolated bar is kept and so still checked for order: the last row is the earliest
    _, report = validate(
        "X", frame_of([*days, "2010-06-03"]), Interval.parse("1d"), policies={"isolated_timestamp": "warn"}
    )
    assert {(f.row, f.rule) for f in report.findings} == {(11, "isolated_timestamp"), (11, "decreasing_timestamp")}
