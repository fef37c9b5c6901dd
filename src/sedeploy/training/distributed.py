"""Data-parallel plumbing: the process group, sharding that cannot hang, and reductions.

Under `torchrun --nproc_per_node N` training runs DistributedDataParallel (gloo on CPU, nccl on
CUDA). Every backward pass is a collective, so every rank must run the same number of steps: the
training order is padded to a multiple of the world size by repeating its first indices, as
torch.utils.data.DistributedSampler does, before each rank takes its strided shard. Evaluation
runs no collective per batch (the unwrapped module is evaluated), so its shards are not padded and
every validation/test sample is counted exactly once in the final all-reduce.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Dist(dist.get_rank(), dist.get_world_size())


def shard(order: torch.Tensor, d: Dist, pad: bool) -> torch.Tensor:
    """This rank's part of `order`. pad=True (training): every rank gets ceil(n / world) indices."""
    if d.world == 1:
        return order
    if pad and len(order) % d.world:
        extra = d.world - len(order) % d.world
        order = torch.cat([order, order[:extra].repeat(-(-extra // max(len(order), 1)))[:extra]])
    return order[d.rank::d.world]


def all_sum(values: List[float], d: Dist, device: torch.device) -> List[float]:
    if d.world == 1:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather(obj: Any, d: Dist) -> List[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (one object per rank)."""
    if d.world == 1:
        return [obj]
    import torch.distributed as dist
    out: List[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def sync_buffers(model: torch.nn.Module, d: Dist) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each training forward, so after the last step of an epoch
    every rank holds statistics updated with its own last batch. Evaluation must score one model.
    """
    if d.world == 1:
        return
    import torch.distributed as dist
    for b in getattr(model, "module", model).buffers():
        dist.broadcast(b.data, src=0)
