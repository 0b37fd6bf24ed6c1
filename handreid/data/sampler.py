"""PK sampler: batches of P identities x K images, seeded per epoch.

An epoch: every identity's images are shuffled and cut into chunks of K (a short last
chunk, or an identity with fewer than K images, is filled by drawing again from that
identity's images); the chunks are shuffled and packed P at a time into batches of P
distinct identities. So every training image is seen at least once per epoch, except
chunks that cannot complete a final batch of P distinct identities. The order depends
only on (seed, epoch), which makes resumed runs replay the same batches.
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
        self._length = len(self._indices(0))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunks(self, rng: np.random.Generator) -> list[tuple[int, list[int]]]:
        chunks = []
        for label, idx in self.groups.items():
            idx = list(rng.permutation(idx))
            n_chunks = -(-len(idx) // self.k)
            fill = n_chunks * self.k - len(idx)
            idx += list(rng.choice(idx, size=fill, replace=True)) if fill else []
            chunks += [(label, idx[c * self.k : (c + 1) * self.k]) for c in range(n_chunks)]
        return [chunks[i] for i in rng.permutation(len(chunks))]

    def _indices(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch])
        pending = self._chunks(rng)
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
                return out
            out += [int(i) for chunk in batch for i in chunk]
            pending = rest

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices(self.epoch))

    def __len__(self) -> int:
        return self._length

    @property
    def batch_size(self) -> int:
        return self.p * self.k
