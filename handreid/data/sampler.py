"""PK sampler: batches of P identities x K images, seeded per epoch.

An epoch: every identity's images are shuffled and cut into chunks of K (a short last
chunk, or an identity with fewer than K images, is filled by drawing again from that
identity's images); the chunks are shuffled and packed P at a time into batches of P
distinct identities. Every epoch has the same number of batches, ``n_chunks // P``
(a learning-rate schedule counts on it): chunks that cannot complete a batch of P
distinct identities are carried, ahead of a freshly shuffled round, until the epoch is
full. The order depends only on (seed, epoch), which makes resumed runs replay the same
batches.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class PKSampler(Sampler[int]):
    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0):
        if p < 1 or k < 1:
            raise ValueError("P and K must be >= 1")
        self.groups: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            self.groups[int(label)].append(index)
        if len(self.groups) < p:
            raise ValueError(f"PK sampler needs at least P={p} identities, got {len(self.groups)}")
        self.p, self.k, self.seed = p, k, seed
        self.epoch = 0
        n_chunks = sum(-(-len(idx) // k) for idx in self.groups.values())
        self._length = max(1, n_chunks // p) * p * k

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices(self.epoch))

    def __len__(self) -> int:
        return self._length

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def _chunks(self, rng: np.random.Generator) -> list[tuple[int, list[int]]]:
        chunks = []
        for label, idx in self.groups.items():
            idx = list(rng.permutation(idx))
            n_chunks = -(-len(idx) // self.k)
            fill = n_chunks * self.k - len(idx)
            idx += list(rng.choice(idx, size=fill, replace=True)) if fill else []
            chunks += [(label, idx[c * self.k : (c + 1) * self.k]) for c in range(n_chunks)]
        return [chunks[i] for i in rng.permutation(len(chunks))]

    def _pack(self, pending: list) -> tuple[list[int], list]:
        """Greedy batches of P distinct identities; returns their indices and the rest."""
        out: list[int] = []
        while True:
            batch, used, rest = [], set(), []
            for label, chunk in pending:
                if len(batch) < self.p and label not in used:
                    batch.append(chunk)
                    used.add(label)
                else:
                    rest.append((label, chunk))
            if len(batch) < self.p:
                return out, pending
            out += [int(i) for chunk in batch for i in chunk]
            pending = rest

    def _indices(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch])
        out: list[int] = []
        pending: list = []
        while len(out) < self._length:  # a fresh round always yields a batch (>= P ids)
            packed, pending = self._pack(pending + self._chunks(rng))
            out += packed
        return out[: self._length]


class SeededDraws(Sampler[tuple[int, int]]):
    """Wraps an epoch-aware sampler so that each draw carries its own augmentation seed:
    yields ``(index, seed)`` with the seeds drawn from (seed, epoch, position in the epoch).

    A draw's random augmentation then depends on nothing else: not on which loader worker
    decodes it, on how many workers there are, or on what a worker drew before (persistent
    workers keep their random state across epochs). A run resumed at epoch ``e`` therefore
    augments every image exactly as the uninterrupted run did.
    """

    STREAM = 0xA06  # keeps these seeds apart from the sampler's own (seed, epoch) stream

    def __init__(self, sampler: PKSampler, seed: int = 0):
        self.sampler, self.seed = sampler, seed

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(self.sampler)
        rng = np.random.default_rng([self.seed, self.sampler.epoch, self.STREAM])
        seeds = rng.integers(0, 2**62, size=len(indices)).tolist()
        return iter(zip(indices, seeds))

    def __len__(self) -> int:
        return len(self.sampler)
