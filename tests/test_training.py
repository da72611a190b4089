"""The training objectives against a reference written from the published math, gradients, dropout, checkpoints."""

from __future__ import annotations

import pytest
import torch

import reference
from kronos_tasks.model import Kronos, KronosTokenizer
from kronos_tasks.model.presets import MODEL_PRESETS, TOKENIZER_PRESETS, random_model, random_tokenizer
from kronos_tasks.training.objectives import predictor_loss, tokenizer_loss

RTOL = 1e-5


def bars(batch=3, length=40, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, 6, generator=generator).clamp(-5, 5)


def stamps(batch=3, length=40, seed=1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    highs = torch.tensor([60, 24, 7, 32, 13])
    return (torch.rand(batch, length, 5, generator=generator) * highs).floor()


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return abs(float(a) - float(b)) <= RTOL * abs(float(b))


def test_tokenizer_loss_equals_the_reference_in_training_mode():
    tokenizer = random_tokenizer("tiny", seed=3).train()
    x = bars()
    loss, parts = tokenizer_loss(tokenizer, x)
    want, recon, bsq = reference.tokenizer_training_loss(tokenizer.state_dict(), TOKENIZER_PRESETS["tiny"], x)
    assert close(loss, want) and close(parts["recon"], recon) and close(parts["bsq"], bsq)
    assert close(parts["recon_s1"] + parts["recon_full"], recon)


@pytest.mark.parametrize("learn_te", [True, False])
def test_predictor_loss_with_teacher_forcing_equals_the_reference(learn_te):
    tokenizer = random_tokenizer("tiny", seed=3).eval()
    model = random_model({**MODEL_PRESETS["tiny"], "learn_te": learn_te}, seed=4).train()
    x, t = bars(), stamps()
    loss, parts = predictor_loss(model, tokenizer, x, t)
    s1, s2 = (
        torch.stack(ids)
        for ids in zip(*(reference.tokenizer_encode(tokenizer.state_dict(), TOKENIZER_PRESETS["tiny"], b) for b in x))
    )
    cfg = {**MODEL_PRESETS["tiny"], "learn_te": learn_te}
    want, ce_s1, ce_s2 = reference.predictor_training_loss(model.state_dict(), cfg, s1, s2, t, s1[:, 1:])
    assert close(loss, want) and close(parts["s1"], ce_s1) and close(parts["s2"], ce_s2)


def test_upstream_sampled_s1_conditioning_changes_only_the_s2_loss():
    tokenizer = random_tokenizer("tiny", seed=3).eval()
    model = random_model("tiny", seed=4).train()
    x, t = bars(), stamps()
    _, forced = predictor_loss(model, tokenizer, x, t, s2_condition="target")
    torch.manual_seed(0)
    _, sampled = predictor_loss(model, tokenizer, x, t, s2_condition="sampled")
    assert torch.equal(forced["s1"], sampled["s1"]) and not torch.equal(forced["s2"], sampled["s2"])
    with pytest.raises(ValueError, match="s2_condition must be 'target' or 'sampled'"):
        predictor_loss(model, tokenizer, x, t, s2_condition="teacher")


def test_gradients_reach_every_trained_weight_and_never_the_frozen_tokenizer():
    tokenizer = random_tokenizer("tiny", seed=3).train().requires_grad_(True)
    loss, _ = tokenizer_loss(tokenizer, bars())
    loss.backward()
    missing = [n for n, p in tokenizer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    tokenizer.zero_grad(set_to_none=True)
    model = random_model("tiny", seed=4).train().requires_grad_(True)
    loss, _ = predictor_loss(model, tokenizer.eval(), bars(), stamps())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == [] and all(p.grad is None for p in tokenizer.parameters())


def test_dropout_applies_in_training_mode_only():
    noisy = {**TOKENIZER_PRESETS["tiny"], "ffn_dropout_p": 0.2, "attn_dropout_p": 0.2, "resid_dropout_p": 0.2}
    tokenizer = random_tokenizer(noisy, seed=3)
    plain = KronosTokenizer(**TOKENIZER_PRESETS["tiny"])
    plain.load_state_dict(tokenizer.state_dict())
    x = bars()
    tokenizer.train()
    first, second = tokenizer_loss(tokenizer, x)[0], tokenizer_loss(tokenizer, x)[0]
    assert not torch.equal(first, second)
    with torch.no_grad():
        assert torch.equal(tokenizer_loss(tokenizer.eval(), x)[0], tokenizer_loss(plain.eval(), x)[0])
    model_cfg = {**MODEL_PRESETS["tiny"], "token_dropout_p": 0.2, "resid_dropout_p": 0.2, "attn_dropout_p": 0.2}
    model = random_model(model_cfg, seed=4).train()
    t = stamps()
    assert not torch.equal(predictor_loss(model, plain, x, t)[0], predictor_loss(model, plain, x, t)[0])


def test_a_trained_pair_saves_in_the_published_layout_and_loads_back(tmp_path):
    from safetensors.torch import load_file

    tokenizer = random_tokenizer("tiny", seed=3).train().requires_grad_(True)
    model = random_model("tiny", seed=4).train().requires_grad_(True)
    optimizer = torch.optim.AdamW([*tokenizer.parameters(), *model.parameters()], lr=1e-3)
    loss = tokenizer_loss(tokenizer, bars())[0] + predictor_loss(model, tokenizer, bars(), stamps())[0]
    loss.backward()
    optimizer.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = random_model("tiny", seed=4).save_pretrained(tmp_path / "fresh")
    folder = model.save_pretrained(tmp_path / "trained")
    assert set(load_file(folder / "model.safetensors")) == set(load_file(fresh / "model.safetensors"))
    loaded = Kronos.from_pretrained(folder)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in before.items())
    assert not torch.equal(
        before["head.proj_s1.weight"], random_model("tiny", seed=4).state_dict()["head.proj_s1.weight"]
    )
    KronosTokenizer.from_pretrained(tokenizer.save_pretrained(tmp_path / "tok"))


# --- data, trainer and the finetune command ------------------------------------------------------------


@pytest.fixture
def stored(tmp_path):
    from conftest import SAMPLE_DATA
    from kronos_tasks.pipeline.ingest import ingest_paths
    from kronos_tasks.storage import make_engine, upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'k.db'}")
    upgrade(engine)
    ingest_paths(engine, [SAMPLE_DATA / "a_share_5min.csv"], exchange="XSHG")
    return engine


def a_share_item():
    from kronos_tasks.data.watchlist import WatchItem

    return WatchItem("a_share", "XSHG", "5min", None, "Asia/Shanghai")


def test_windows_split_by_time_and_are_normalised_as_inference_normalises(stored):
    import numpy as np

    from kronos_tasks.inference.features import normalise
    from kronos_tasks.storage import read_bars
    from kronos_tasks.training.data import load_training_data

    data = load_training_data(stored, [a_share_item()], lookback=64, pred_len=8, val_share=0.2)
    (series,) = data.series
    assert series.split == 2000 and data.train.length == 73
    last_train_end = max(start for _, start in data.train.starts) + data.train.length
    assert last_train_end <= series.split <= min(start for _, start in data.val.starts)  # no window crosses
    assert len(data.val) == 500 - 73 + 1
    x, stamps = data.train.window(10)
    bars = read_bars(stored, "a_share", "5min").iloc[10 : 10 + 73]
    values = bars[["open", "high", "low", "close", "volume", "amount"]].to_numpy()
    context, mean, std = normalise(values[:64], 5.0)
    np.testing.assert_allclose(x[:64], context, rtol=1e-6, atol=1e-6)  # the context exactly as inference scales it
    np.testing.assert_allclose(x[64:], np.clip((values[64:] - mean) / (std + 1e-5), -5, 5), rtol=1e-5, atol=1e-5)
    local = bars["ts"].dt.tz_convert("Asia/Shanghai")
    assert stamps[0].tolist() == [
        local.iloc[0].minute,
        local.iloc[0].hour,
        local.iloc[0].weekday(),
        local.iloc[0].day,
        local.iloc[0].month,
    ]
    described = data.describe()
    assert (
        described["symbols"][0]["validation_from"] == series.split_ts.isoformat()
        and len(described["data_sha256"]) == 64
    )


def test_too_little_history_is_refused_with_the_symbol_and_what_it_needs(stored):
    from kronos_tasks.data.schema import DataError
    from kronos_tasks.training.data import load_training_data

    with pytest.raises(DataError, match=r"a_share at 5min: 2500 stored bars; .* needs at least 5010"):
        load_training_data(stored, [a_share_item()], lookback=1000, pred_len=1, val_share=0.2)


def test_training_lowers_the_validation_loss_and_a_killed_run_resumes_from_its_checkpoint(stored, tmp_path):
    from kronos_tasks.training.config import TrainConfig
    from kronos_tasks.training.data import load_training_data
    from kronos_tasks.training.trainer import Stage

    data = load_training_data(stored, [a_share_item()], lookback=48, pred_len=4, val_share=0.2, stride=4)
    config = TrainConfig(lookback=48, pred_len=4, batch_size=16, epochs=2, eval_every=10, patience=100, seed=1)
    tokenizer = random_tokenizer("tiny", seed=3)

    def stage(folder):
        model = random_model("tiny", seed=4)
        return Stage(
            "predictor", model, lambda x, t: predictor_loss(model, tokenizer, x, t), 1e-3, config, folder
        ), model

    first, _ = stage(tmp_path / "a")
    before = first.validate(data.val, torch.device("cpu"))
    logged = []
    done = first.run(data, None, lambda step, metrics: logged.append((step, metrics)), lambda line: None)
    assert done.best_val < before * 0.9 and done.stopped == "epochs"
    steps = [s for s, m in logged if "predictor_val_loss" in m]
    assert steps[:2] == [10, 20] and all(
        "predictor_lr" in m and "predictor_tokens_per_second" in m for _, m in logged if "predictor_train_loss" in m
    )

    # A run killed after its checkpoint at step 20 goes on from there and ends where the uninterrupted one did.
    killed, _ = stage(tmp_path / "b")

    def die(step, metrics):
        if step == 21:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        killed.run(data, None, die, lambda line: None)
    resumed, model = stage(tmp_path / "b")
    lines = []
    result = resumed.run(data, None, lambda step, metrics: None, lines.append)
    assert lines[0].startswith("predictor: resuming from step 20")
    assert result.steps == done.steps and result.best_val == pytest.approx(done.best_val, rel=1e-4)


@pytest.mark.slow
def test_finetune_command_trains_in_two_processes_backtests_and_registers_with_lineage(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import SAMPLE_DATA

    cli = str(Path(sys.executable).with_name("kronos-flow"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRONOS_", "MLFLOW_"))}
    env.update({"KRONOS_HOME": str(tmp_path / "home"), "KRONOS_DEVICE": "cpu"})
    subprocess.run(
        [cli, "ingest", SAMPLE_DATA / "a_share_5min.csv", "--exchange", "XSHG"],
        env=env,
        check=True,
        capture_output=True,
    )
    result = subprocess.run(
        [
            cli,
            "finetune",
            "--symbols",
            "a_share:5min",
            "--preset",
            "tiny",
            "--epochs",
            "1",
            "--lookback",
            "48",
            "--pred-len",
            "4",
            "--eval-every",
            "20",
            "--backtest-origins",
            "5",
            "--register",
            "--alias",
            "challenger",
            "--processes",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "tokenizer:" in result.stdout
        and "predictor:" in result.stdout
        and "finetuned pair on the held-back tail" in result.stdout
    )
    assert "registered kronos-model version 1 (tokenizer version 1) as @challenger" in result.stdout
    from kronos_tasks.registry import Registry
    from kronos_tasks.settings import Settings

    registry = Registry(Settings.from_env(env))
    pinned = registry.resolve("challenger")
    version = registry.client.get_model_version("kronos-model", pinned.model_version)
    tags = {k.removeprefix("kronos."): v for k, v in version.tags.items()}
    assert tags["lineage.base"] == "random:tiny seed 0" and tags["lineage.symbols"] == "a_share:5min"
    assert len(tags["lineage.data_sha256"]) == 64 and tags["lineage.train.lookback"] == "48"
    run = registry.client.get_run(tags["lineage.training_run"])
    curve = registry.client.get_metric_history(run.info.run_id, "predictor_train_loss")
    assert len(curve) > 10 and [m.step for m in curve] == sorted(m.step for m in curve)
    assert run.data.params["train_tokenizer"] == "True" and "finetuned_skill_vs_persistence" in run.data.metrics
    assert run.data.params["processes"] == "2" and run.data.params["device"] == "cpu"
    listed = {a.path for a in registry.client.list_artifacts(run.info.run_id)}
    assert {"training_data.json", "backtest.json"} <= listed
    described = json.loads(
        Path(registry.client.download_artifacts(run.info.run_id, "training_data.json", str(tmp_path))).read_text()
    )
    assert described["symbols"][0]["bars"] == 2500


def test_two_data_parallel_processes_take_the_steps_one_process_takes(stored, tmp_path):
    """torchrun with two gloo processes on the CPU: uneven shares of each batch (4 + 3 windows) and
    accumulation under DDP's no_sync give the single-process losses and weights, up to float rounding."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    database = stored.url.database
    script = str(Path(__file__).with_name("ddp_stage.py"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, script, database, tmp_path / "one"], env=env, check=True, timeout=300)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    subprocess.run([*torchrun, script, database, tmp_path / "two"], env=env, check=True, timeout=300)
    one, two = (json.loads((tmp_path / name / "curve.json").read_text()) for name in ("one", "two"))
    assert (one["world"], two["world"], one["steps"], two["steps"]) == (1, 2, 12, 12)
    assert [step for step, _ in two["curve"]] == [step for step, _ in one["curve"]]
    for (_, alone), (_, together) in zip(one["curve"], two["curve"]):
        assert alone.keys() == together.keys()
        for name in (k for k in alone if "loss" in k):
            assert together[name] == pytest.approx(alone[name], rel=1e-5), name
    alone, together = load_file(tmp_path / "one" / "best.safetensors"), load_file(tmp_path / "two" / "best.safetensors")
    assert max(float((alone[k] - together[k]).abs().max()) for k in alone) < 5e-5  # a step moves weights ~1e-3
