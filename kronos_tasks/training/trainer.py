"""Fine-tuning a Kronos pair on stored bars: the tokenizer (optionally), then the predictor.

Each stage runs AdamW (betas 0.9/0.95, weight decay 0.1, as upstream) under a one-cycle schedule (linear
warm-up, cosine decay), clips gradients to norm 3, accumulates gradients over ``accumulation`` batches,
evaluates on the validation windows every ``eval_every`` optimizer steps, keeps the best weights, stops
early after ``patience`` evaluations without improvement, and stops at its share of the wall-clock
budget (``minutes``) or after ``epochs``. After every evaluation the stage writes a checkpoint
(safetensors + JSON: weights, best weights, optimizer and schedule state, position in the data), and a
run started again with the same folder resumes from it. bf16 autocast is used on CUDA when asked.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import TrainConfig
from .data import TrainingData, WindowSet
from .objectives import predictor_loss, tokenizer_loss

MetricsLog = Callable[[int, dict[str, float]], None]  # (global step, metrics)


@dataclass
class StageResult:
    name: str
    steps: int
    best_val: float
    stopped: str  # epochs, budget, early_stopping
    seconds: float


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class Stage:
    """One module trained on one objective, with its checkpoint folder."""

    def __init__(
        self,
        name: str,
        module: nn.Module,
        loss: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]],
        lr: float,
        config: TrainConfig,
        folder: Path,
    ):
        self.name, self.module, self.loss, self.config, self.folder = name, module, loss, config, folder
        self.optimizer = torch.optim.AdamW(
            module.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=config.weight_decay
        )
        self.lr = lr

    def _schedule(self, total_steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
        return torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=self.lr,
            total_steps=max(total_steps, 2),
            pct_start=self.config.warmup_share,
            div_factor=10,
            anneal_strategy="cos",
        )

    def _autocast(self, device: torch.device):
        if self.config.bf16 and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast(device.type, enabled=False)

    def validate(self, data: WindowSet, device: torch.device) -> float:
        """Mean loss over the validation windows, in eval mode (no dropout)."""
        self.module.eval()
        total, count = 0.0, 0
        with torch.no_grad(), self._autocast(device):
            for x, stamps in data.batches(self.config.batch_size, torch.Generator(), shuffle=False):
                loss, _ = self.loss(x.to(device), stamps.to(device))
                total += float(loss) * len(x)
                count += len(x)
        self.module.train()
        return total / max(count, 1)

    def save(self, position: dict, best: dict[str, torch.Tensor]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors, meta = _flatten_optimizer(self.optimizer)
        tensors.update({f"module.{k}": v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()})
        tensors.update({f"best.{k}": v for k, v in best.items()})
        save_file(tensors, str(self.folder / "state.tmp.safetensors"))
        (self.folder / "state.tmp.json").write_text(json.dumps({**position, "optimizer": meta}))
        # Both files are complete before either replaces the last checkpoint.
        (self.folder / "state.tmp.safetensors").replace(self.folder / "state.safetensors")
        (self.folder / "state.tmp.json").replace(self.folder / "state.json")

    def load(self) -> tuple[dict, dict[str, torch.Tensor]] | None:
        if not (self.folder / "state.json").is_file():
            return None
        position = json.loads((self.folder / "state.json").read_text())
        tensors = load_file(str(self.folder / "state.safetensors"))
        device = next(self.module.parameters()).device
        self.module.load_state_dict({k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")})
        _restore_optimizer(self.optimizer, {k: v.to(device) for k, v in tensors.items()}, position.pop("optimizer"))
        best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
        return position, best

    def run(
        self, data: TrainingData, deadline: float | None, log: MetricsLog, progress: Callable[[str], None]
    ) -> StageResult:
        """Train until the epochs, the deadline or early stopping end it; the module ends with its best weights."""
        config, device = self.config, next(self.module.parameters()).device
        self.module.train().requires_grad_(True)
        per_epoch = max(1, math.ceil(len(data.train) / (config.batch_size * config.accumulation)))
        schedule = self._schedule(per_epoch * config.epochs)
        best = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
        position = {"epoch": 0, "batch": 0, "step": 0, "best_val": float("inf"), "bad_evals": 0, "seconds": 0.0}
        restored = self.load()
        if restored is not None:
            position, best = restored
            schedule.load_state_dict(position.pop("schedule"))
            progress(f"{self.name}: resuming from step {position['step']} (epoch {position['epoch'] + 1})")
        started = time.monotonic() - position["seconds"]
        stopped, tokens, tick = "epochs", 0, time.monotonic()
        while position["epoch"] < config.epochs and stopped == "epochs":
            generator = torch.Generator().manual_seed(config.seed * 1000 + position["epoch"])
            batches = data.train.batches(config.batch_size, generator)
            for index, (x, stamps) in enumerate(batches):
                if index < position["batch"]:
                    continue  # resumed: batches of this epoch already trained on
                with self._autocast(device):
                    loss, parts = self.loss(x.to(device), stamps.to(device))
                (loss / config.accumulation).backward()
                tokens += x.shape[0] * x.shape[1]
                position["batch"] = index + 1
                if position["batch"] % config.accumulation:
                    continue
                norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), config.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if schedule.last_epoch + 1 < schedule.total_steps:
                    schedule.step()
                position["step"] += 1
                now = time.monotonic()
                metrics = {
                    f"{self.name}_train_loss": float(loss.detach()),
                    f"{self.name}_lr": self.optimizer.param_groups[0]["lr"],
                    f"{self.name}_grad_norm": float(norm),
                    f"{self.name}_tokens_per_second": tokens / max(now - tick, 1e-9),
                }
                metrics.update({f"{self.name}_train_{k}": float(v.detach()) for k, v in parts.items()})
                tokens, tick = 0, now
                if position["step"] % config.eval_every == 0:
                    metrics.update(self._evaluate(data, device, position, best))
                    if position["bad_evals"] >= config.patience:
                        stopped = "early_stopping"
                    position["seconds"] = now - started
                    self.save({**position, "schedule": schedule.state_dict()}, best)
                log(position["step"], metrics)
                progress(
                    f"{self.name}: epoch {position['epoch'] + 1}/{config.epochs} step {position['step']} "
                    f"loss {float(loss.detach()):.4f} best val {position['best_val']:.4f}"
                )
                if stopped == "epochs" and deadline is not None and now > deadline:
                    stopped = "budget"
                if stopped != "epochs":
                    break
            else:
                position["epoch"], position["batch"] = position["epoch"] + 1, 0
        log(position["step"], self._evaluate(data, device, position, best))
        position["seconds"] = time.monotonic() - started
        self.save({**position, "schedule": schedule.state_dict()}, best)
        self.module.load_state_dict(best)
        self.module.eval().requires_grad_(False)
        return StageResult(self.name, position["step"], position["best_val"], stopped, position["seconds"])

    def _evaluate(self, data: TrainingData, device: torch.device, position: dict, best: dict) -> dict[str, float]:
        val = self.validate(data.val, device)
        if val < position["best_val"]:
            position["best_val"], position["bad_evals"] = val, 0
            best.clear()
            best.update({k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()})
        else:
            position["bad_evals"] += 1
        return {f"{self.name}_val_loss": val, f"{self.name}_best_val_loss": position["best_val"]}


def finetune(
    tokenizer: nn.Module,
    model: nn.Module,
    data: TrainingData,
    config: TrainConfig,
    folder: Path,
    train_tokenizer: bool = False,
    log: MetricsLog = lambda step, metrics: None,
    progress: Callable[[str], None] = lambda line: None,
) -> list[StageResult]:
    """Train ``tokenizer`` (if asked) then ``model`` on ``data`` in place, checkpointing under ``folder``.

    The predictor always trains against the tokenizer it will be registered with: the fine-tuned one when
    ``train_tokenizer``, else the frozen base tokenizer.
    """
    config.check()
    torch.manual_seed(config.seed)
    deadline = None if config.minutes is None else time.monotonic() + config.minutes * 60
    results = []
    if train_tokenizer:
        stage_deadline = None if deadline is None else time.monotonic() + config.minutes * 60 / 2
        stage = Stage(
            "tokenizer",
            tokenizer,
            lambda x, _stamps: tokenizer_loss(tokenizer, x),
            config.tokenizer_lr,
            config,
            folder / "tokenizer-stage",
        )
        results.append(stage.run(data, stage_deadline, log, progress))
    tokenizer.eval().requires_grad_(False)
    stage = Stage(
        "predictor",
        model,
        lambda x, stamps: predictor_loss(model, tokenizer, x, stamps, config.s2_condition),
        config.predictor_lr,
        config,
        folder / "predictor-stage",
    )
    results.append(stage.run(data, deadline, log, progress))
    return results
