"""Which samples each optimiser step reads: a pure function of (seed, step, rank).

The labelled and unlabelled streams are sequences of passes of a
``torch.utils.data.DistributedSampler`` (one shuffle per pass, ``set_epoch(pass)``; each rank gets
its own disjoint share), cut into per-step batches. Because step t's batch depends only on t, a run
resumed from any checkpoint reads exactly the batches the uninterrupted run would have read: the
sampler itself holds no state to save.
"""
from __future__ import annotations

from torch.utils.data import DistributedSampler


class BatchStream:
    """Per-step sample indices into a list of ``n`` samples.

    Args:
        n: number of samples in the stream (≥ 1).
        batch_size: samples per step on this rank.
        seed: shuffling seed (the same on every rank).
        rank, world_size: this process's place under torch.distributed (0, 1 without it).

    Example:
        >>> s = BatchStream(10, 4, seed=0)
        >>> len(s.indices(0)), s.indices(3) == BatchStream(10, 4, seed=0).indices(3)
        (4, True)
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if n < 1:
            raise ValueError(f"a batch stream needs at least one sample, got n={n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size = n, batch_size
        # drop_last=False pads each rank's share to the same length by repeating samples, as
        # DistributedDataParallel training expects equal step counts on every rank.
        self.sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.per_pass = len(self.sampler)
        self._cache: dict[int, list[int]] = {}

    def _pass(self, k: int) -> list[int]:
        if k not in self._cache:
            self.sampler.set_epoch(k)
            self._cache = {k: list(iter(self.sampler))}  # one pass kept: steps move forward
        return self._cache[k]

    def indices(self, step: int) -> list[int]:
        """The sample indices of optimiser step ``step`` on this rank."""
        start = step * self.batch_size
        out = []
        for p in range(start, start + self.batch_size):
            k, i = divmod(p, self.per_pass)
            out.append(self._pass(k)[i])
        return out

    def steps_per_pass(self) -> int:
        """Steps that read every sample of this rank's share once (an epoch)."""
        return max(1, -(-self.per_pass // self.batch_size))
