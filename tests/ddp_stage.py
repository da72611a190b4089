"""A predictor stage trained by whatever group this process is in (one process, or torchrun's), for
tests/test_training.py: ``python ddp_stage.py DB OUT`` writes the trained weights and the loss curve."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from kronos_tasks.data.watchlist import WatchItem
from kronos_tasks.model.presets import random_model, random_tokenizer
from kronos_tasks.storage import make_engine
from kronos_tasks.training import distributed
from kronos_tasks.training.config import TrainConfig
from kronos_tasks.training.data import load_training_data
from kronos_tasks.training.objectives import predictor_loss
from kronos_tasks.training.trainer import Stage

# 7 windows per batch split 4 + 3 between two processes, and two batches per step: the uneven split and
# DDP's no_sync accumulation both have to come out as the single-process step.
CONFIG = TrainConfig(lookback=32, pred_len=4, batch_size=7, accumulation=2, epochs=1, eval_every=5, patience=100)
STEPS = 12


def main(database: str, out: str) -> None:
    torch.set_num_threads(1)
    group = distributed.join("cpu")
    item = WatchItem("a_share", "XSHG", "5min", None, "Asia/Shanghai")
    data = load_training_data(make_engine(f"sqlite:///{database}"), [item], 32, 4, val_share=0.2, stride=8)
    data.train.starts = data.train.starts[: STEPS * CONFIG.batch_size * CONFIG.accumulation]
    tokenizer, model = random_tokenizer("tiny", seed=3).eval(), random_model("tiny", seed=4)
    torch.manual_seed(0)
    stage = Stage(
        "predictor",
        model,
        lambda x, t: predictor_loss(model, tokenizer, x, t),
        1e-3,
        CONFIG,
        Path(out) / "checkpoints",
        group,
    )
    curve = []
    result = stage.run(data, None, lambda step, metrics: curve.append((step, metrics)), lambda line: None)
    if group.main:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(out) / "best.safetensors"))
        (Path(out) / "curve.json").write_text(json.dumps({"curve": curve, "steps": result.steps, "world": group.world}))
    distributed.leave(group)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
