"""Which samples a process sees, and in what order: resumable sharded shuffling, per-sample RNG seeding,
and the unpadded evaluation shard."""
from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

__all__ = ["ResumableDistributedSampler", "SampleSeededDataset", "ShardSampler"]


class ResumableDistributedSampler(DistributedSampler):
    """A `DistributedSampler` (same shuffling: seed + epoch) that can skip the first `start` samples of
    this rank's share of the epoch, so a run resumed mid-epoch sees exactly the batches it had left."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class SampleSeededDataset(Dataset):
    """Runs `dataset[i]` under RNG states (torch, NumPy, Python) seeded from (seed, epoch, i), restoring the
    caller's states afterwards.

    Random augmentation then depends on the sample and the epoch only: not on the worker that loads it,
    the number of workers or processes, nor on where a resumed run restarts. `epoch` is set by the
    trainer before each epoch's iterator is created (workers copy it when they start).
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        s = (self.seed * 1_000_003 + self.epoch * 10_007 + int(i) * 7_919 + 12_345) % (2**63 - 1)
        py, nps = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)
            try:
                return self.dataset[i]
            finally:
                random.setstate(py)
                np.random.set_state(nps)


class ShardSampler(Sampler[int]):
    """Indices `rank::world_size` of range(n), no padding (evaluation must see every sample exactly once)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
