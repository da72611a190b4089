"""Charts people read: forecast fan charts with dates and provenance, and the evaluation's calibration plots.

Names from the data (symbols, model names) are drawn as text, never as matplotlib mathtext.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on workers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

FEATURE = "close"
BAND_ALPHAS = (0.14, 0.24, 0.34)  # outer to inner
TICK_CHAR_INCHES = 0.085  # a tick label character at the default size, with room to spare
OFFSET_TEXT_INCHES = 0.2  # the line of a y axis's offset or scale ("1e9") above it


@dataclass(frozen=True)
class FanInput:
    """One symbol's close forecast (rows of one feature, by step) with the history it followed."""

    symbol: str
    interval: str
    timezone: str
    history: pd.DataFrame  # ts (UTC) and close, oldest first, ending at the forecast origin
    forecast: pd.DataFrame  # step, target_ts, mean, prob_above_last, q<level> columns


@dataclass(frozen=True)
class Provenance:
    """What made the forecast, for titles: run time, model version, and a warning about the weights."""

    run_label: str  # e.g. "run 2024-08-28 21:30 UTC"
    model_label: str  # e.g. "kronos-model v3"
    note: str | None = None  # "UNTRAINED model: its forecasts are noise", "demonstration model ..."


def quantile_columns(frame: pd.DataFrame) -> list[tuple[float, str]]:
    """The frame's quantile columns (``q0.1``, ...) with their levels, lowest first."""
    found = [(float(c[1:]), c) for c in frame.columns if c.startswith("q") and c[1:].replace(".", "").isdigit()]
    return sorted(found)


def bands(levels: list[float]) -> list[tuple[float, float]]:
    """Central bands from quantile levels, widest first: (0.1, 0.9), (0.25, 0.75), ..."""
    low = [q for q in levels if q < 0.5]
    return [(q, 1 - q) for q in sorted(low) if any(abs(h - (1 - q)) < 1e-9 for h in levels)]


def _local(stamps, timezone: str) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(stamps, utc=True)).tz_convert(timezone).tz_localize(None)


def _tick_labels(stamps: pd.DatetimeIndex, interval: str) -> list[str]:
    daily = interval[-1] in "dwM" or interval.endswith("mo")
    return [f"{t:%Y-%m-%d}" if daily else f"{t:%m-%d %H:%M}" for t in stamps]


def draw_fan(axis, fan: FanInput, provenance: Provenance, compact: bool = False) -> None:
    """History, the origin, mean and median, labelled quantile bands and P(up) at the last step on ``axis``.

    The x axis counts bars (the origin is 0), labelled with the bars' local dates and times: nights,
    weekends and holidays take no room, so intraday history and forecast stay readable.
    """
    history, forecast = fan.history, fan.forecast.sort_values("step")
    past_t = _local(history["ts"], fan.timezone)
    future_t = _local(forecast["target_ts"], fan.timezone)
    past_x = list(range(-len(history) + 1, 1))
    # Every forecast line starts at the last observed close, so history and forecast join.
    future_x = [0, *forecast["step"].astype(int)]
    last_close = float(history[FEATURE].iloc[-1])

    def joined(values) -> list[float]:
        return [last_close, *map(float, values)]

    axis.plot(past_x, history[FEATURE], color="black", lw=1.1, label="history")
    levels = dict(quantile_columns(forecast))
    for (low, high), alpha in zip(bands(list(levels)), BAND_ALPHAS):
        axis.fill_between(
            future_x,
            joined(forecast[levels[low]]),
            joined(forecast[levels[high]]),
            color="tab:blue",
            alpha=alpha,
            lw=0,
            label=f"{high - low:.0%} band (P{low * 100:g}-P{high * 100:g})",
        )
    axis.plot(future_x, joined(forecast["mean"]), color="tab:blue", lw=1.6, label="mean")
    if 0.5 in levels:
        axis.plot(future_x, joined(forecast[levels[0.5]]), color="tab:orange", lw=1.2, ls="--", label="median")
    axis.axvline(0, color="grey", lw=0.9, ls=":")
    axis.annotate(
        f"origin {_tick_labels(past_t[-1:], fan.interval)[0]}",
        (0, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(-4, -12),
        textcoords="offset points",
        ha="right",
        fontsize=7,
        color="grey",
    )
    last = forecast.iloc[-1]
    axis.text(
        0.99,
        0.97,
        f"P(close up after {int(last['step'])} bars): {float(last['prob_above_last']):.0%}",
        transform=axis.transAxes,
        ha="right",
        va="top",
        fontsize=8,
        color="tab:blue",
        bbox={"facecolor": "white", "edgecolor": "tab:blue", "alpha": 0.85, "pad": 2},
    )
    positions = past_x + future_x[1:]
    stamps = past_t.append(future_t)
    stride = max(1, len(positions) // (5 if compact else 8))
    ticks = [x for x in positions if x % stride == 0]  # evenly spaced, the origin among them
    axis.set_xticks(ticks, _tick_labels(stamps[[positions.index(t) for t in ticks]], fan.interval), fontsize=7)
    axis.set_xlim(positions[0] - 0.5, positions[-1] + 0.5)
    axis.set_xlabel(f"{fan.interval} bars, local time ({fan.timezone})", fontsize=8)
    axis.set_ylabel(FEATURE)
    axis.grid(alpha=0.25)
    title = f"{fan.symbol} {FEATURE} · {fan.interval} bars · {provenance.run_label} · {provenance.model_label}"
    axis.set_title(title, fontsize=9 if compact else 10, loc="left", parse_math=False)
    if provenance.note:
        axis.text(
            0.01,
            0.02,
            provenance.note,
            transform=axis.transAxes,
            fontsize=8,
            color="firebrick",
            va="bottom",
            bbox={"facecolor": "white", "edgecolor": "firebrick", "alpha": 0.85, "pad": 2},
        )
    axis.legend(loc="upper left", fontsize=7, ncol=2 if compact else 1)


def fit_margins(figure, axes: list, top: float = 0.32, gap: float = 0.62) -> None:
    """Set margins that fit the fan charts' labels, without the drawing passes ``tight_layout`` and a
    saved figure with a layout engine make (each as costly as drawing the figure): the left one from the
    widest y tick label as its formatter writes it; the others fixed (titles, x labels and tick labels
    have one font size and line). ``top`` is the space above the first axes, ``gap`` between stacked axes."""
    chars, offset = 0, False
    for axis in axes:
        ticks = [t for t in axis.get_yticks() if axis.get_ylim()[0] <= t <= axis.get_ylim()[1]]
        formatter = axis.yaxis.get_major_formatter()
        chars = max([chars, *(len(label) for label in formatter.format_ticks(ticks))])
        offset = offset or bool(formatter.get_offset())  # "1e9" above the axis, where the title is
    if offset:
        top, gap = top + OFFSET_TEXT_INCHES, gap + OFFSET_TEXT_INCHES
    width, height = figure.get_size_inches()
    left = 0.42 + TICK_CHAR_INCHES * chars  # the y label, its pad and the tick marks, then the labels
    bottom = 0.5  # tick labels and the x label
    figure.subplots_adjust(
        left=left / width,
        right=1 - 0.12 / width,
        top=1 - top / height,
        bottom=bottom / height,
        hspace=gap / ((height - top - bottom - gap * (len(axes) - 1)) / len(axes)) if len(axes) > 1 else None,
    )


def fan_figure(fan: FanInput, provenance: Provenance):
    """One symbol's fan chart as a matplotlib figure (close it when done)."""
    figure, axis = plt.subplots(figsize=(10, 4.2))
    draw_fan(axis, fan, provenance)
    fit_margins(figure, [axis])
    return figure


def overview_figure(fans: list[FanInput], provenance: Provenance, total: int):
    """The first symbols' fan charts stacked in one figure; the title says how many the run had."""
    figure, axes = plt.subplots(len(fans), 1, figsize=(10, 3.3 * len(fans)), squeeze=False)
    for axis, fan in zip(axes[:, 0], fans):
        draw_fan(axis, fan, provenance, compact=True)
    if total > len(fans):
        figure.suptitle(
            f"{len(fans)} of {total} symbols (one chart per symbol under charts/)",
            fontsize=9,
            x=0.01,
            ha="left",
            y=1 - 0.08 / figure.get_figheight(),
            va="top",
        )
    fit_margins(figure, list(axes[:, 0]), top=0.6 if total > len(fans) else 0.32)
    return figure


def fan_chart(fan: FanInput, provenance: Provenance, path: Path) -> None:
    """One symbol's fan chart, written to ``path``."""
    figure = fan_figure(fan, provenance)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def overview(fans: list[FanInput], provenance: Provenance, path: Path, total: int) -> None:
    """``overview_figure`` written to ``path``."""
    figure = overview_figure(fans, provenance, total)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def reliability_plot(table: list[dict], title: str, path: Path) -> None:
    """Forecast P(close up) against the observed frequency, per probability bin, with each bin's count."""
    figure, axis = plt.subplots(figsize=(4.8, 4.8))
    axis.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfectly calibrated")
    used = [b for b in table if b["count"]]
    axis.plot([b["mean_forecast"] for b in used], [b["observed"] for b in used], marker="o", label="forecasts")
    for b in used:
        axis.annotate(
            str(b["count"]), (b["mean_forecast"], b["observed"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("forecast P(close up)")
    axis.set_ylabel("observed frequency of close up")
    axis.set_title(title, fontsize=9, parse_math=False)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def horizon_plot(horizons: list[dict], title: str, path: Path, band: str) -> None:
    """Per forecast step: MAE skill versus persistence (left) and the realised coverage of ``band`` (right)."""
    steps = [h["step"] for h in horizons]
    figure, (skill_axis, cover_axis) = plt.subplots(1, 2, figsize=(9, 3.6))
    skill_axis.axhline(0, color="grey", lw=1, ls="--")
    skill_axis.plot(steps, [h["skill"] for h in horizons], marker="o", ms=3)
    skill_axis.set_xlabel("bars ahead")
    skill_axis.set_ylabel("MAE skill vs persistence")
    skill_axis.set_title("skill by horizon (> 0: better than persistence)", fontsize=9)
    nominal = horizons[0].get("nominal") if horizons else None
    if nominal is not None:
        cover_axis.axhline(nominal, color="grey", lw=1, ls="--", label=f"nominal {nominal:.0%}")
    for key, name, colour in (
        ("raw_coverage", "raw", "tab:blue"),
        ("calibrated_coverage", "calibrated", "tab:green"),
        ("baseline_coverage", "historical volatility", "tab:grey"),
    ):
        if any(key in h for h in horizons):
            values = [h.get(key, float("nan")) for h in horizons]
            cover_axis.plot(steps, values, marker="o", ms=3, color=colour, label=f"{band} band, {name}")
    cover_axis.set_ylim(0, 1)
    cover_axis.set_xlabel("bars ahead")
    cover_axis.set_ylabel("share of outcomes inside")
    cover_axis.set_title("coverage by horizon", fontsize=9)
    cover_axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=9, x=0.01, ha="left")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
