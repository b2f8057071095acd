"""A distributed sampler whose order depends only on (seed, epoch) and that can start mid-epoch.

torch's DistributedSampler cannot skip the samples already seen before a failure; this
one can, which is what makes a resumed run see exactly the batches an uninterrupted
run would have seen.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

from usam.seeding import derive_seed


class ShardedEpochSampler(Sampler[int]):
    def __init__(self, size: int, *, rank: int, world: int, seed: int, shuffle: bool = True):
        self.size, self.rank, self.world, self.seed, self.shuffle = size, rank, world, seed, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate ``epoch`` from this rank's ``start``-th sample on."""
        self.epoch, self.start = epoch, start

    @property
    def per_rank(self) -> int:
        return self.size // self.world  # equal shards: every rank runs the same number of steps

    def _shard(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "sampler", self.epoch))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        return order[: self.per_rank * self.world][self.rank :: self.world]

    def __iter__(self):
        return iter(self._shard()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start
