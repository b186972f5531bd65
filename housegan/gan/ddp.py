"""Data-parallel training through ``torchrun``: one process per GPU (or CPU process with gloo).

``setup`` reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); without it,
training runs as a single process and every helper here is a no-op.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from housegan.devices import DeviceSpec, resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether setup() created the process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: DeviceSpec | torch.device) -> tuple[DistInfo, torch.device]:
    """Join torchrun's process group if launched by it; returns who we are and our device
    (a bare ``"cuda"`` is this process's local GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(), target
    owns = not dist.is_initialized()
    if owns:
        if target.type == "cuda":
            torch.cuda.set_device(target)
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns)
    return info, target


def teardown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP-wrap a module that trains: its gradients are averaged over ranks in backward.

    Buffers (batch-norm statistics, spectral-norm vectors) are not broadcast at each forward:
    weights stay identical on all ranks, and rank 0's buffers are the ones saved.
    """
    if not info.enabled:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    with warnings.catch_warnings():
        # Its successor, forward_sync_buffers=False, would still sync at init; same for us.
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, broadcast_buffers=False
        )


def all_gather(tensor: Tensor, info: DistInfo) -> list[Tensor]:
    """Every rank's copy of a same-shaped tensor (on CPU), in rank order."""
    if not info.enabled:
        return [tensor.cpu()]
    on_wire = tensor.cuda() if dist.get_backend() == "nccl" else tensor
    parts = [torch.empty_like(on_wire) for _ in range(info.world_size)]
    dist.all_gather(parts, on_wire)
    return [part.cpu() for part in parts]


def reduce_flags(flags: Tensor, info: DistInfo) -> Tensor:
    """Element-wise max over ranks: any rank's True (1) wins."""
    if info.enabled:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


def reduce_mean(values: Tensor, info: DistInfo) -> Tensor:
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values = values / info.world_size
    return values


def broadcast(values: Tensor, info: DistInfo) -> Tensor:
    """Rank 0's values on every rank (e.g. a decision taken from rank 0's clock)."""
    if info.enabled:
        dist.broadcast(values, src=0)
    return values
