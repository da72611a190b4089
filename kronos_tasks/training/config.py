"""The hyper-parameters of a fine-tuning run, without torch (the CLI's and the DAG's defaults come from here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kronos_tasks.errors import ParamsError

FROM_SCRATCH_LR = 1e-3  # random weights learn from scratch: a larger step than upstream's fine-tuning rates


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of a fine-tuning run (all of them are logged with it)."""

    lookback: int = 256
    pred_len: int = 24
    batch_size: int = 32
    epochs: int = 30  # the most passes over the training windows, per stage
    minutes: float | None = None  # wall-clock budget of the whole run (both stages)
    predictor_lr: float = 4e-5
    tokenizer_lr: float = 2e-4
    weight_decay: float = 0.1
    warmup_share: float = 0.03
    clip_grad: float = 3.0
    accumulation: int = 1
    eval_every: int = 50
    patience: int = 10
    val_share: float = 0.2
    seed: int = 0
    s2_condition: str = "target"  # or "sampled", upstream's fine-tuning behaviour
    bf16: bool = False

    def check(self) -> TrainConfig:
        positive = {
            k: getattr(self, k)
            for k in ("lookback", "pred_len", "batch_size", "epochs", "accumulation", "eval_every", "patience")
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ParamsError(f"{name} must be a positive integer, got {value!r}.")
        if self.minutes is not None and not self.minutes > 0:
            raise ParamsError(f"minutes must be positive, got {self.minutes!r}.")
        for name in ("predictor_lr", "tokenizer_lr"):
            if not 0 < getattr(self, name) < 1:
                raise ParamsError(f"{name} must be between 0 and 1, got {getattr(self, name)!r}.")
        if not 0 < self.val_share < 1:
            raise ParamsError(f"val_share must be between 0 and 1, got {self.val_share!r}.")
        if self.s2_condition not in ("target", "sampled"):
            raise ParamsError(f"s2_condition must be target or sampled, got {self.s2_condition!r}.")
        return self


def config_params(config: TrainConfig) -> dict[str, str]:
    """The hyper-parameters as strings, for MLflow params and registry lineage."""
    return {k: str(v) for k, v in asdict(config).items()}
