"""Decoding benchmark: full recompute (upstream's way) against the cached path.

    python bench/decode.py                 # the full table (tens of minutes on 2 CPU cores)
    python bench/decode.py --quick         # Kronos-small only, one symbol and 32 symbols
    python bench/decode.py --device cuda   # on a GPU: also 256 symbols, all in one process
    python bench/decode.py --device cuda --dtype bfloat16
    python bench/decode.py --parity --device cuda   # half precision against float32, same seeds

Random weights of the published shapes (Kronos-small, Kronos-base with Kronos-Tokenizer-base), real
bars from the sample data, nucleus sampling (T=1, top_p=0.9). Each configuration runs in a fresh
process, so its peak memory is its own. The full-recompute path takes minutes per configuration here,
so it is timed on a few steps (the first, the middle and the last, where the window is longest) and
its per-step time is their mean; the table says how many steps were timed.

The floor of a cached step is max(bytes of the weights / measured memory bandwidth, FLOPs of the
step's linear layers / measured matrix-multiply rate), both measured on this machine in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kronos_tasks.inference.params import DTYPE_NAMES  # noqa: E402

SHAPES = {"Kronos-small": "Kronos-Tokenizer-base", "Kronos-base": "Kronos-Tokenizer-base"}
DEMO_PAIR = ROOT / "kronos_tasks" / "sample_data" / "demo_pair"
WINDOWS = [(384, 128), (400, 120)]  # (lookback, pred_len); the second slides past max_context 512
MAX_CONTEXT = 512


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _clock(device: str) -> float:
    _sync(device)
    return time.perf_counter()


def machine(device: str) -> dict:
    """Description of the machine, with its measured memory bandwidth and matrix-multiply rate."""
    import torch

    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        info["name"] = torch.cuda.get_device_name(device)
        big = torch.empty(512 * 2**20 // 4, device=device)
        a = torch.randn(8192, 8192, device=device)
    else:
        model_name = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        info["name"] = f"{model_name}, {os.cpu_count()} cores"
        big = torch.empty(400 * 2**20 // 4)
        a = torch.randn(2048, 2048)
    big.fill_(1.0)
    big.sum()
    start = _clock(device)
    for _ in range(5):
        big.sum()
    info["bandwidth_gb_s"] = 5 * big.numel() * 4 / (_clock(device) - start) / 1e9
    from kronos_tasks.model.layers import Linear

    layer = Linear(a.shape[1], a.shape[0], bias=False).to(device)
    x = torch.randn(1024, a.shape[1], device=device)
    with torch.inference_mode():
        layer(x)
        start = _clock(device)
        for _ in range(5):
            layer(x)
        info["matmul_gflop_s"] = 5 * 2 * x.shape[0] * a.numel() / (_clock(device) - start) / 1e9
    return info


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every 2 ms (CPU); CUDA's own counter on GPU."""

    def __init__(self, device: str):
        self.device, self.peak = device, 0.0

    def __enter__(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        self.start, self.running = _rss_mb(), True

        def sample():
            while self.running:
                self.peak = max(self.peak, _rss_mb() - self.start)
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.startswith("cuda"):
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20 - self.start
        else:
            self.running = False
            self.thread.join()


def _frames(count: int, lookback: int, pred_len: int) -> list[tuple]:
    """``count`` (history, x_timestamp, y_timestamp) windows cut from the bundled 5-minute bars."""
    import pandas as pd

    df = pd.read_csv(ROOT / "kronos_tasks" / "sample_data" / "a_share_5min.csv", parse_dates=["timestamps"])
    out = []
    for n in range(count):
        start = (n * 37) % (len(df) - lookback - pred_len)
        window = df.iloc[start : start + lookback + pred_len].reset_index(drop=True)
        history = window.iloc[:lookback]
        out.append((history.drop(columns="timestamps"), history["timestamps"], window["timestamps"].iloc[lookback:]))
    return out


def _inputs(symbols: int, lookback: int, pred_len: int, dtype, device):
    """``_frames``' windows as the decoder takes them: normalised bars, history and future time features."""
    import torch

    from kronos_tasks.inference.features import normalise, time_features

    bars, stamps, future = [], [], []
    for history, x_timestamp, y_timestamp in _frames(symbols, lookback, pred_len):
        values, _, _ = normalise(history.to_numpy(), 5.0)
        bars.append(torch.tensor(values, dtype=dtype, device=device))
        stamps.append(torch.tensor(time_features(x_timestamp), dtype=dtype, device=device))
        future.append(torch.tensor(time_features(y_timestamp), dtype=dtype, device=device))
    return bars, stamps, future


def run_one(config: dict) -> dict:
    """Time one configuration in this process; returns the measurements."""
    import torch

    from kronos_tasks.inference import generate as gen
    from kronos_tasks.inference.sampling import SamplingParams, sample_from_logits
    from kronos_tasks.model.presets import parameter_count, random_model, random_tokenizer

    device, symbols, samples = config["device"], config["symbols"], config["samples"]
    lookback, pred_len = config["lookback"], config["pred_len"]
    dtype = getattr(torch, config.get("dtype", "float32"))
    model = random_model(config["model"]).to(device, dtype)
    tokenizer = random_tokenizer(SHAPES[config["model"]]).to(device, dtype)
    bars, stamps, future = _inputs(symbols, lookback, pred_len, model.dtype, device)
    params = SamplingParams(T=1.0, top_k=0, top_p=0.9)
    seeds = torch.arange(symbols, device=device)
    out = {**config, "params": parameter_count(model)}

    # Cached path, whole forecast: tokenize, prefill + steps, decode.
    with PeakMemory(device) as memory:
        start = _clock(device)
        batch = gen.tokenize(tokenizer, bars, stamps, future, MAX_CONTEXT)
        tokenized = _clock(device)
        s1, s2 = gen.generate_tokens(model, batch, samples, params, seeds, "cached")
        generated = _clock(device)
        gen.decode_tokens(tokenizer, batch, s1, s2, samples, "cached")
        done = _clock(device)
    out["peak_mem_mb"] = memory.peak
    out["cached_total_s"] = done - start
    out["cached_step_ms"] = (generated - tokenized) / pred_len * 1e3
    out["tokenize_s"], out["decode_s"] = tokenized - start, done - generated
    if device.startswith("cuda"):
        # The same steps as plain cached steps (kernel by kernel), against the default's choice above.
        out["graph"] = gen.use_slots(None, "cached", batch, samples)
        begin = _clock(device)
        eager = gen.generate_tokens(model, batch, samples, params, seeds, "cached", slots=False)
        out["eager_step_ms"] = (_clock(device) - begin) / pred_len * 1e3
        out["graph_tokens_equal"] = float(((eager[0] == s1) & (eager[1] == s2)).double().mean())

    # Prefill alone: a one-step forecast.
    one = gen.tokenize(tokenizer, bars, stamps, [f[:1] for f in future], MAX_CONTEXT)
    start = _clock(device)
    gen.generate_tokens(model, one, samples, params, seeds, "cached")
    out["prefill_s"] = _clock(device) - start

    # Full recompute on a few steps, with the generated tokens fixed (a step costs the same whatever they are).
    if config["full_steps"]:
        rows = symbols * samples
        fixed = gen._Generated(s1=s1, s2=s2, stamps=batch.future_stamps.repeat_interleave(samples, 0))
        steps = gen._FullSteps(model, batch, samples, fixed)
        chosen = sorted({0, pred_len // 2, pred_len - 1})[: config["full_steps"]]
        times = []
        with torch.inference_mode():
            for i in chosen:
                start = _clock(device)
                u = torch.rand(rows, device=device)
                s1_logits, s2_input = steps.s1_logits(i)
                sample_from_logits(s1_logits, params, u)
                sample_from_logits(steps.s2_logits(s2_input, s1[:, i], i), params, u)
                times.append(_clock(device) - start)
            start = _clock(device)
            gen.decode_tokens(tokenizer, batch, s1, s2, samples, "full")
            full_decode = _clock(device) - start
        out["full_steps_timed"] = len(times)
        out["full_step_ms"] = sum(times) / len(times) * 1e3
        out["full_total_s"] = out["tokenize_s"] + out["full_step_ms"] / 1e3 * pred_len + full_decode
    return out


def leak_check(device: str, forecasts: int = 8) -> list[float]:
    """Resident memory (MB) after each of ``forecasts`` cached forecasts of 125 steps (1,000 steps in all)."""
    import torch

    from kronos_tasks.inference import generate as gen
    from kronos_tasks.inference.sampling import SamplingParams
    from kronos_tasks.model.presets import random_model, random_tokenizer

    model = random_model("Kronos-small").to(device)
    tokenizer = random_tokenizer("Kronos-Tokenizer-base").to(device)
    bars, stamps, future = _inputs(1, 384, 125, model.dtype, device)
    rss = []
    for i in range(forecasts):
        batch = gen.tokenize(tokenizer, bars, stamps, future, MAX_CONTEXT)
        s1, s2 = gen.generate_tokens(model, batch, 8, SamplingParams(), torch.tensor([i], device=device))
        gen.decode_tokens(tokenizer, batch, s1, s2, 8)
        rss.append(torch.cuda.memory_allocated(device) / 2**20 if device.startswith("cuda") else _rss_mb())
    return rss


def configurations(quick: bool, device: str, dtype: str = "float32") -> list[dict]:
    configs = []
    gpu = device.startswith("cuda")
    for model in ["Kronos-small"] if quick else list(SHAPES):
        for lookback, pred_len in WINDOWS[:1] if quick else WINDOWS:
            for samples in [8] if quick else [1, 8]:
                for symbols in (1, 32, 256) if gpu else (1, 32):
                    # Full recompute: 3 steps for one symbol; for 32 symbols a step takes minutes here, so 2.
                    full_steps = 3 if symbols == 1 or gpu else 2
                    configs.append(
                        {
                            "model": model,
                            "lookback": lookback,
                            "pred_len": pred_len,
                            "samples": samples,
                            "symbols": symbols,
                            "device": device,
                            "dtype": dtype,
                            "full_steps": full_steps,
                        }
                    )
    return configs


def warm_up(device: str, dtype: str) -> None:
    """One short forecast, so that CUDA's context, kernels and library handles are loaded before timing."""
    run_one({**configurations(True, device, dtype)[0], "pred_len": 4, "full_steps": 1})


def table(info: dict, results: list[dict]) -> str:
    lines = [
        f"Machine: {info['name']}; torch {info['torch']}, {info['threads']} threads; measured read bandwidth "
        f"{info['bandwidth_gb_s']:.1f} GB/s, matrix multiply {info['matmul_gflop_s']:.0f} GFLOP/s (float32); "
        f"weights and cache in {results[0].get('dtype', 'float32')}.",
        "",
        "| model | lookback / pred_len | samples | symbols | full: ms/step (steps timed) | cached: ms/step | "
        "cached / floor | speed-up per step | full total s | cached total s | speed-up total | "
        "cached bars/s | prefill s | peak extra memory MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        rows = r["symbols"] * r["samples"]
        weight_bytes = (4 if r.get("dtype", "float32") == "float32" else 2) * r["params"]
        floor_s = max(
            weight_bytes / (info["bandwidth_gb_s"] * 1e9), 2 * r["params"] * rows / (info["matmul_gflop_s"] * 1e9)
        )
        bars = rows * r["pred_len"]
        full = f"{r['full_step_ms']:.0f} ({r['full_steps_timed']} of {r['pred_len']})" if "full_step_ms" in r else "-"
        speed_step = f"{r['full_step_ms'] / r['cached_step_ms']:.0f}x" if "full_step_ms" in r else "-"
        speed_total = f"{r['full_total_s'] / r['cached_total_s']:.0f}x" if "full_total_s" in r else "-"
        full_total = f"{r['full_total_s']:.1f}" if "full_total_s" in r else "-"
        lines.append(
            f"| {r['model']} | {r['lookback']} / {r['pred_len']} | {r['samples']} | {r['symbols']} | {full} | "
            f"{r['cached_step_ms']:.1f} | {r['cached_step_ms'] / 1e3 / floor_s:.1f}x | {speed_step} | {full_total} | "
            f"{r['cached_total_s']:.2f} | {speed_total} | {bars / r['cached_total_s']:.0f} | {r['prefill_s']:.2f} | "
            f"{r['peak_mem_mb']:.0f} |"
        )
    graphs = [r for r in results if "eager_step_ms" in r]
    if graphs:
        lines += ["", "Cached steps as a replayed CUDA graph against the same steps launched kernel by kernel:", ""]
        for r in graphs:
            lines.append(
                f"- {r['model']}, {r['lookback']} / {r['pred_len']}, {r['samples']} samples, {r['symbols']} symbols: "
                f"{r['cached_step_ms']:.2f} ms a step against {r['eager_step_ms']:.2f} ms "
                f"({r['eager_step_ms'] / r['cached_step_ms']:.1f}x); tokens equal: {r['graph_tokens_equal']:.2%}"
                + ("." if r["lookback"] + r["pred_len"] - 1 <= MAX_CONTEXT else " (the window slides: no graph).")
            )
    lines += ["", "Batching, per symbol (whole forecast, cached path):", ""]
    for r in results:
        if r["symbols"] == 1:
            continue
        alone = next(
            (
                a
                for a in results
                if a["symbols"] == 1 and all(a[k] == r[k] for k in ("model", "lookback", "pred_len", "samples"))
            ),
            None,
        )
        if alone:
            per_symbol = r["cached_total_s"] / r["symbols"]
            lines.append(
                f"- {r['model']}, {r['lookback']} / {r['pred_len']}, {r['samples']} samples: {r['symbols']} symbols "
                f"in one batch take {per_symbol:.2f} s per symbol against {alone['cached_total_s']:.2f} s alone "
                f"({alone['cached_total_s'] / per_symbol:.1f}x less per symbol)."
            )
    return "\n".join(lines)


def _pairs():
    """(name, loader, max_context, lookback): the demo pair's trained weights and Kronos-small's shape."""
    from kronos_tasks.model import Kronos, KronosTokenizer, load_pretrained
    from kronos_tasks.model.presets import random_model, random_tokenizer

    return [
        (
            "demo pair (trained, tiny)",
            lambda: (
                load_pretrained(KronosTokenizer, DEMO_PAIR / "tokenizer"),
                load_pretrained(Kronos, DEMO_PAIR / "model"),
            ),
            144,
            120,
        ),
        (
            "Kronos-small shape (random weights)",
            lambda: (random_tokenizer("Kronos-Tokenizer-base"), random_model("Kronos-small")),
            512,
            488,
        ),
    ]


def parity(device: str, series: int = 32, pred_len: int = 24, samples: int = 16) -> list[dict]:
    """Half precision against float32 on the same seeds and inputs, through ``KronosPredictor``.

    For each pair and dtype: relative differences |half - float32| / |float32| of the forecast closes,
    greedy (top_k=1, one path) and the mean of ``samples`` nucleus paths (T=1, top_p=0.9).
    """
    import numpy as np

    from kronos_tasks.inference.predictor import KronosPredictor

    results = []
    for name, load, max_context, lookback in _pairs():
        frames = _frames(series, lookback, pred_len)
        dfs, xs, ys = (list(column) for column in zip(*frames))
        closes = {}
        for dtype in DTYPE_NAMES:
            tokenizer, model = load()
            predictor = KronosPredictor(model, tokenizer, device=device, max_context=max_context, dtype=dtype)
            greedy = predictor.predict_batch(dfs, xs, ys, pred_len, top_k=1, seed=7, verbose=False)
            sampled = predictor.predict_batch(
                dfs, xs, ys, pred_len, T=1.0, top_p=0.9, sample_count=samples, seed=7, verbose=False
            )
            closes[dtype] = {
                "greedy": np.stack([f["close"].to_numpy() for f in greedy]),
                "sampled mean": np.stack([f["close"].to_numpy() for f in sampled]),
            }
        for dtype in DTYPE_NAMES[1:]:
            for kind, reference in closes["float32"].items():
                relative = np.abs(closes[dtype][kind] - reference) / np.abs(reference)
                results.append(
                    {
                        "pair": name,
                        "dtype": dtype,
                        "forecast": kind,
                        "max_rel": float(relative.max()),
                        "median_rel": float(np.median(relative)),
                        "finite": bool(np.isfinite(closes[dtype][kind]).all()),
                    }
                )
    return results


def daily_batches(device: str, symbols: int = 256, pred_len: int = 24, samples: int = 16) -> list[dict]:
    """The daily DAG's model work for ``symbols`` series (its defaults: 24 bars, 16 samples, quantiles
    0.1/0.5/0.9) through ``KronosPredictor.predict_batch``, per pair, dtype and decode batch size."""
    from kronos_tasks.inference.predictor import KronosPredictor

    results = []
    for name, load, max_context, lookback in _pairs():
        frames = _frames(symbols, lookback, pred_len)
        dfs, xs, ys = (list(column) for column in zip(*frames))
        for dtype in ("float32", "bfloat16"):
            for batch_size in (32, symbols):
                tokenizer, model = load()
                predictor = KronosPredictor(
                    model, tokenizer, device=device, max_context=max_context, batch_size=batch_size, dtype=dtype
                )
                predictor.predict_batch(dfs[:batch_size], xs[:batch_size], ys[:batch_size], pred_len, verbose=False)
                start = _clock(device)
                predictor.predict_batch(
                    dfs, xs, ys, pred_len, sample_count=samples, quantiles=[0.1, 0.5, 0.9], seed=3, verbose=False
                )
                seconds = _clock(device) - start
                results.append(
                    {
                        "pair": name,
                        "lookback": lookback,
                        "dtype": dtype,
                        "batch_size": batch_size,
                        "symbols": symbols,
                        "seconds": seconds,
                        "ms_per_symbol": seconds / symbols * 1e3,
                    }
                )
    return results


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def parity_table(rows: list[dict]) -> str:
    header = ["pair", "dtype", "forecast", "max relative difference", "median", "all finite"]
    cells = [
        [r["pair"], r["dtype"], r["forecast"], f"{r['max_rel']:.2e}", f"{r['median_rel']:.2e}", r["finite"]]
        for r in rows
    ]
    return markdown_table(header, cells)


def daily_table(rows: list[dict]) -> str:
    header = ["pair", "lookback", "dtype", "decode batch", "symbols", "seconds", "ms per symbol"]
    cells = [
        [
            r["pair"],
            r["lookback"],
            r["dtype"],
            r["batch_size"],
            r["symbols"],
            f"{r['seconds']:.2f}",
            f"{r['ms_per_symbol']:.1f}",
        ]
        for r in rows
    ]
    return markdown_table(header, cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Kronos-small, lookback 384, 8 samples only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="weights and cache of the decode table")
    parser.add_argument("--parity", action="store_true", help="half precision against float32, and 256 symbols")
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--leak", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    if args.leak:
        print(json.dumps(leak_check(args.device)))
        return

    if args.parity:
        rows, batches = parity(args.device), daily_batches(args.device)
        print(parity_table(rows) + "\n\n" + daily_table(batches))
        if args.json:
            args.json.write_text(
                json.dumps({"machine": machine(args.device), "parity": rows, "daily": batches}, indent=2)
            )
        return

    info = machine(args.device)
    results = []
    gpu = args.device.startswith("cuda")
    if gpu:
        warm_up(args.device, args.dtype)
    for config in configurations(args.quick, args.device, args.dtype):
        print(f"running {config} ...", file=sys.stderr, flush=True)
        if gpu:  # CUDA's peak-memory counter is reset per configuration, so they share a process
            try:
                results.append(run_one(config))
            except RuntimeError as error:  # out of memory, say: the other configurations still run
                print(f"failed: {error}", file=sys.stderr, flush=True)
            if args.json:  # what is done so far survives a time limit
                args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2))
            continue
        proc = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(config)], capture_output=True, text=True, check=True
        )
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    leak = json.loads(
        subprocess.run(
            [sys.executable, __file__, "--leak", "--device", args.device], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    print(table(info, results))
    print()
    print(
        "Memory after each of 8 cached forecasts of 125 steps (1,000 steps; Kronos-small, 1 symbol x 8 samples), "
        "MB: " + ", ".join(f"{m:.0f}" for m in leak)
    )
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results, "leak_mb": leak}, indent=2))


if __name__ == "__main__":
    main()
