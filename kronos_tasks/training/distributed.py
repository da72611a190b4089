"""Data-parallel training under ``torchrun``: which process this is, its device, and the few collectives
the trainer needs.

One process per device. ``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``join`` then
opens the process group (NCCL on CUDA, gloo on the CPU) and gives each process its device
(``cuda:LOCAL_RANK``). Started any other way, the run is a group of one and no collective is called.
Every process holds the same weights (DDP averages gradients); process 0 alone writes checkpoints, logs
to MLflow and registers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes, and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums of ``values`` over every process (the values themselves in a group of one)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any (a stop decision all of them take together)."""
        return self.sum([float(flag)])[0] > 0

    def share(self, value):
        """Process 0's ``value`` (any picklable object), on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self._comm_device)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        # NCCL moves CUDA tensors only; gloo moves CPU tensors.
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: str) -> Group:
    """The group this process belongs to; opens the process group when started by ``torchrun``.

    ``device`` is the setting (``auto``, ``cpu``, ``cuda``, ``cuda:1``); under torchrun, ``auto`` and
    ``cuda`` mean this process's own GPU (``LOCAL_RANK``), and the CPU when the machine has none.
    """
    from kronos_tasks.inference.predictor import default_device

    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if launched_by_torchrun() else 0
    if device in ("auto", "cuda") and torch.cuda.is_available():
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device(default_device() if device == "auto" else device)
    if not launched_by_torchrun():
        return Group(0, 1, chosen)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Group(dist.get_rank(), dist.get_world_size(), chosen)


def leave(group: Group) -> None:
    """Close the process group ``join`` opened (nothing for a group of one)."""
    if group.distributed and dist.is_initialized():
        dist.destroy_process_group()


SINGLE = Group(0, 1, torch.device("cpu"))
