"""torchrun support: one process per device, ranks from the environment torchrun sets, only rank 0 writes.

``torchrun --nproc_per_node N [--nnodes M ...] -m datvit train ...`` (or ``torchrun --no-python ... datvit train``)
sets RANK / LOCAL_RANK / WORLD_SIZE; a plain ``datvit train`` runs as a world of one. NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: Optional[str], local_rank: int = 0) -> torch.device:
    """``--device`` or the default (the local GPU when there is one); each local rank gets its own GPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device: Optional[str] = None, timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a world of one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, timeout=datetime.timedelta(minutes=timeout_minutes), device_id=dev if dev.type == "cuda" else None
        )
    return DistInfo(rank, local_rank, world_size, dev)


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over all ranks (in float64 on the training device)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. a time-stamped run directory name)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


_CONTROL_GROUPS: dict = {}


def _control_group() -> Any:
    """A gloo group for the per-step control flags, so that reading them needs no GPU synchronisation under NCCL
    (None: the default group, already gloo). Created on first use — every rank calls ``max_over_ranks`` at the same
    points, so every rank creates it in the same order, as ``new_group`` requires."""
    if dist.get_backend() == "gloo":
        return None
    key = id(dist.group.WORLD)
    if key not in _CONTROL_GROUPS:
        _CONTROL_GROUPS[key] = dist.new_group(backend="gloo")
    return _CONTROL_GROUPS[key]


def max_over_ranks(flags: list[int], info: DistInfo) -> list[int]:
    """Each integer's maximum over all ranks (one all-reduce of a few integers, over gloo on the CPU): what
    lets every rank take the same decision at the same step (stop on a signal, skip a non-finite step)."""
    if not info.distributed:
        return [int(f) for f in flags]
    t = torch.tensor([int(f) for f in flags], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group())
    return [int(v) for v in t.tolist()]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
