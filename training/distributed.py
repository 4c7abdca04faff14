"""Multi-GPU / multi-node helpers: torchrun's environment, cross-process sums, the sampler.

``batch_size`` is the GLOBAL batch (split over the processes); the positive-count normalizers
are summed over processes (``Dist.sum_int``), so N processes train like one with the combined
batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from ms_perception_training.config import ConfigError


@dataclass
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str = ""

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum_int(self, n: int) -> int:
        if self.world == 1:
            return n
        t = torch.tensor([n], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return int(t.item())

    def mean_float(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world


def init_distributed(device: str) -> Dist:
    """From torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(world, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), backend)


class EpochSampler:
    """Iteration → the indices of this process: a DistributedSampler (shuffle, drop_last) per
    epoch, ``set_epoch`` at each epoch boundary, ``per_rank`` indices per iteration."""

    def __init__(self, n: int, batch_size: int, d: Dist, seed: int):
        from torch.utils.data import DistributedSampler
        if batch_size % d.world:
            raise ConfigError(f"fit.batch_size {batch_size} must divide evenly over {d.world} processes")
        self.per_rank = batch_size // d.world
        if n < batch_size:
            raise ConfigError(f"fit.batch_size {batch_size} is larger than the pool of {n} pairs (data.pairs)")
        self.sampler = DistributedSampler(range(n), num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed,
                                          drop_last=True)
        self.per_epoch = len(self.sampler) // self.per_rank
        self._epoch, self._order = None, None

    def indices(self, it: int) -> tuple[int, list[int]]:
        epoch, k = divmod(it, self.per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._order = epoch, list(self.sampler)
        return epoch, self._order[k * self.per_rank:(k + 1) * self.per_rank]
