"""Fine-tuning a Kronos pair on stored bars: the tokenizer (optionally), then the predictor.

Each stage runs AdamW (betas 0.9/0.95, weight decay 0.1, as upstream) under a one-cycle schedule (linear
warm-up, cosine decay), clips gradients to norm 3, accumulates gradients over ``accumulation`` batches,
evaluates on the validation windows every ``eval_every`` optimizer steps, keeps the best weights, stops
early after ``patience`` evaluations without improvement, and stops at its share of the wall-clock
budget (``minutes``) or after ``epochs``. After every evaluation the stage writes a checkpoint
(safetensors + JSON: weights, best weights, optimizer and schedule state, position in the data), and a
run started again with the same folder resumes from it. bf16 autocast is used on CUDA when asked.

Under ``torchrun`` (see ``distributed``) the stage is data-parallel: every process draws the same batch
order, takes its share of each batch of ``batch_size`` windows (``batch_size`` is the global batch, so a
run's hyper-parameters mean the same on any number of devices), and DDP averages the gradients with each
share weighted by its size, so the predictor's update equals the single-process update on the whole batch
(up to float rounding). The tokenizer's codebook-entropy term is a batch statistic and is computed per
process, as in upstream's DDP training. Validation losses are summed over processes, process 0 alone
writes checkpoints and metrics, and process 0's clock decides the wall-clock stop for all.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import TrainConfig
from .data import TrainingData, WindowSet
from .distributed import SINGLE, Group
from .objectives import predictor_loss, tokenizer_loss

MetricsLog = Callable[[int, dict[str, float]], None]  # (global step, metrics)
LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]  # (x, stamps)


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


class Objective(nn.Module):
    """The trained module and its loss as one module, so DDP can wrap the forward pass that makes the loss."""

    def __init__(self, trained: nn.Module, loss: LossFn):
        super().__init__()
        self.trained, self.loss = trained, loss

    def forward(self, x: torch.Tensor, stamps: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss(x, stamps)


class Stage:
    """One module trained on one objective, with its checkpoint folder."""

    def __init__(
        self,
        name: str,
        module: nn.Module,
        loss: LossFn,
        lr: float,
        config: TrainConfig,
        folder: Path,
        group: Group = SINGLE,
    ):
        self.name, self.module, self.loss, self.config, self.folder = name, module, loss, config, folder
        self.group = group
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

    def _share(self, indices: torch.Tensor) -> torch.Tensor:
        """This process's part of a batch of window indices (the whole batch in a group of one)."""
        return torch.tensor_split(indices, self.group.world)[self.group.rank]

    def validate(self, data: WindowSet, device: torch.device) -> float:
        """Mean loss over the validation windows (all processes' shares), in eval mode (no dropout)."""
        self.module.eval()
        total, count = 0.0, 0
        with torch.no_grad(), self._autocast(device):
            for indices in data.batches(self.config.batch_size):
                mine = self._share(indices)
                if len(mine) == 0:
                    continue
                x, stamps = data.batch(mine)
                loss, _ = self.loss(x.to(device), stamps.to(device))
                total += float(loss) * len(mine)
                count += len(mine)
        self.module.train()
        total, count = self.group.sum([total, count])
        return total / max(count, 1)

    def save(self, position: dict, best: dict[str, torch.Tensor]) -> None:
        if not self.group.main:
            return
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

    def _parallel(self, device: torch.device) -> nn.Module:
        objective = Objective(self.module, self.loss)
        if not self.group.distributed:
            return objective
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(objective, device_ids=[device] if device.type == "cuda" else None)

    def run(
        self, data: TrainingData, deadline: float | None, log: MetricsLog, progress: Callable[[str], None]
    ) -> StageResult:
        """Train until the epochs, the deadline or early stopping end it; the module ends with its best weights."""
        config, group, device = self.config, self.group, next(self.module.parameters()).device
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
        objective = self._parallel(device)  # after loading: DDP starts every process from process 0's weights
        started = time.monotonic() - position["seconds"]
        stopped, tokens, tick = "epochs", 0, time.monotonic()
        while position["epoch"] < config.epochs and stopped == "epochs":
            generator = torch.Generator().manual_seed(config.seed * 1000 + position["epoch"])
            for index, indices in enumerate(data.train.batches(config.batch_size, generator)):
                if index < position["batch"]:
                    continue  # resumed: batches of this epoch already trained on
                position["batch"] = index + 1
                mine = self._share(indices)
                if len(mine) == 0:
                    continue  # a last batch smaller than the number of processes: skipped by all of them
                x, stamps = data.train.batch(mine)
                # Each process's loss weighted by its share: DDP's mean of the gradients is then the
                # gradient of the whole batch's mean loss, however unevenly the batch was split.
                weight = len(mine) * group.world / len(indices)
                stepping = position["batch"] % config.accumulation == 0
                quiet = objective.no_sync() if group.distributed and not stepping else nullcontext()
                with quiet:
                    with self._autocast(device):
                        loss, parts = objective(x.to(device), stamps.to(device))
                    (loss * weight / config.accumulation).backward()
                tokens += x.shape[0] * x.shape[1]
                if not stepping:
                    continue
                norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), config.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if schedule.last_epoch + 1 < schedule.total_steps:
                    schedule.step()
                position["step"] += 1
                now = time.monotonic()
                out_of_time = group.main and deadline is not None and now > deadline
                # One collective per step: the whole batch's losses and process 0's clock.
                names = sorted(parts)
                *losses, out_of_time = group.sum(
                    [float(loss.detach()) * weight, *(float(parts[k].detach()) * weight for k in names), out_of_time]
                )
                losses = [value / group.world for value in losses]
                metrics = {
                    f"{self.name}_train_loss": losses[0],
                    f"{self.name}_lr": self.optimizer.param_groups[0]["lr"],
                    f"{self.name}_grad_norm": float(norm),
                    f"{self.name}_tokens_per_second": tokens * group.world / max(now - tick, 1e-9),
                }
                metrics.update({f"{self.name}_train_{k}": v for k, v in zip(names, losses[1:])})
                tokens, tick = 0, now
                if position["step"] % config.eval_every == 0:
                    metrics.update(self._evaluate(data, device, position, best))
                    if position["bad_evals"] >= config.patience:
                        stopped = "early_stopping"
                    position["seconds"] = now - started
                    self.save({**position, "schedule": schedule.state_dict()}, best)
                if group.main:
                    log(position["step"], metrics)
                    progress(
                        f"{self.name}: epoch {position['epoch'] + 1}/{config.epochs} step {position['step']} "
                        f"loss {losses[0]:.4f} best val {position['best_val']:.4f}"
                    )
                if stopped == "epochs" and out_of_time:
                    stopped = "budget"
                if stopped != "epochs":
                    break
            else:
                position["epoch"], position["batch"] = position["epoch"] + 1, 0
        final = self._evaluate(data, device, position, best)
        if group.main:
            log(position["step"], final)
        position["seconds"] = time.monotonic() - started
        self.save({**position, "schedule": schedule.state_dict()}, best)
        group.barrier()
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
    group: Group = SINGLE,
) -> list[StageResult]:
    """Train ``tokenizer`` (if asked) then ``model`` on ``data`` in place on ``group``'s device,
    checkpointing under ``folder``; both end on that device with their best weights.

    The predictor always trains against the tokenizer it will be registered with: the fine-tuned one when
    ``train_tokenizer``, else the frozen base tokenizer.
    """
    config.check()
    torch.manual_seed(config.seed + group.rank)  # dropout masks differ between processes, as their data does
    tokenizer.to(group.device)
    model.to(group.device)
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
            group,
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
        group,
    )
    results.append(stage.run(data, deadline, log, progress))
    return results
