"""The data of one run: its datasets and loaders, built from the config and the split.

The train and validation images are decoded once per run, at the model's input size, and
kept as one uint8 tensor when they fit in ``data.decode_cache_mib`` (3 x H x W bytes an
image: 11k dorsal_r's 962 at 224 px take 138 MiB); the first pass decodes them in the
loader's workers, from ``data.prepared`` when set. Stage 1's features, every validation
(the held-out images query the train images) and the training batches then read memory;
over the bound, every pass decodes the files again. Test images are decoded by the one
pass over them.

The train images go through the training transform in PK batches (``PKSampler``), each
draw with its own augmentation seed (``SeededDraws``: resume is exact with workers); the
validation images and the train images as the validation gallery go through the test
transform. Each dataset and loader is built when first used, once per run (stage 1 reads
only the evaluation side).
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from handreid.config import Config
from handreid.data.dataset import ImageDataset, decode_all
from handreid.data.sampler import PKSampler, SeededDraws
from handreid.data.splits import DataSplit
from handreid.data.transforms import build_test_transform, build_train_transform

log = logging.getLogger(__name__)


class RunData:
    """``preprocess``: the model's input size, mean and std; ``pin_memory`` on CUDA."""

    def __init__(
        self,
        cfg: Config,
        root: Path,
        split: DataSplit,
        labels: dict[str, int],
        preprocess: dict[str, Any],
        pin_memory: bool,
    ):
        self.cfg, self.root, self.split, self.labels = cfg, root, split, labels
        self.preprocess, self.pin_memory = preprocess, pin_memory
        self.size = tuple(preprocess["size"])

    # ------------------------------------------------------------------ decoded images

    def decoded_bytes(self) -> int:
        h, w = self.size
        return (len(self.split.train) + len(self.split.val)) * 3 * h * w

    @cached_property
    def decoded(self) -> torch.Tensor | None:
        """The train images, then the validation images, decoded at the model's input size
        (None when they do not fit in ``data.decode_cache_mib``)."""
        d = self.cfg.data
        need = self.decoded_bytes()
        if need > d.decode_cache_mib * 2**20:
            log.info(
                "decoding images on every pass: they need %.0f MiB, data.decode_cache_mib is %d",
                need / 2**20,
                d.decode_cache_mib,
            )
            return None
        return decode_all(self.root, self.split.train + self.split.val, self.size, d.num_workers)

    def _decoded(self, role: str) -> torch.Tensor | None:
        if self.decoded is None:
            return None
        n = len(self.split.train)
        return self.decoded[:n] if role == "train" else self.decoded[n:]

    def _test_transform(self, decoded: bool):
        pre = self.preprocess
        return build_test_transform(self.size, pre["mean"], pre["std"], resize=not decoded)

    # ------------------------------------------------------------------ evaluation side

    @cached_property
    def gallery_set(self) -> ImageDataset:
        """The train images through the test transform: validation gallery, stage 1's input."""
        images = self._decoded("train")
        tf = self._test_transform(images is not None)
        return ImageDataset(self.root, self.split.train, tf, self.labels, decoded=images)

    @cached_property
    def val_set(self) -> ImageDataset:
        images = self._decoded("val")
        tf = self._test_transform(images is not None)
        return ImageDataset(self.root, self.split.val, tf, self.labels, decoded=images)

    @cached_property
    def gallery_loader(self) -> DataLoader:
        return self.plain_loader(self.gallery_set, persistent=True)

    @cached_property
    def val_loader(self) -> DataLoader:
        return self.plain_loader(self.val_set, persistent=True)

    def eval_dataset(self, items) -> ImageDataset:
        """Other images (the test set) through the test transform, read from their files."""
        return ImageDataset(self.root, items, self._test_transform(False), self.labels)

    def plain_loader(self, dataset: ImageDataset, persistent: bool = False) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(
            dataset,
            batch_size=self.cfg.eval.batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=persistent and workers > 0,
            generator=own_generator(self.cfg.train.seed),
        )

    # ------------------------------------------------------------------ training side

    @cached_property
    def train_set(self) -> ImageDataset:
        d, pre = self.cfg.data, self.preprocess
        images = self._decoded("train")
        train_tf = build_train_transform(
            self.size,
            pre["mean"],
            pre["std"],
            flip_prob=d.flip_prob,
            pad=d.pad,
            color_jitter=d.color_jitter,
            random_erasing=d.random_erasing,
            resize=images is None,
        )
        return ImageDataset(self.root, self.split.train, train_tf, self.labels, decoded=images)

    @cached_property
    def sampler(self) -> SeededDraws:
        t = self.cfg.train
        pk = PKSampler(
            self.train_set.targets, t.batch_size // t.num_instances, t.num_instances, seed=t.seed
        )
        return SeededDraws(pk, seed=t.seed)  # each draw's augmentation seed

    @cached_property
    def train_loader(self) -> DataLoader:
        t, workers = self.cfg.train, self.cfg.data.num_workers
        return DataLoader(
            self.train_set,
            batch_size=t.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            drop_last=True,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
            generator=own_generator(t.seed),
        )


def own_generator(seed: int) -> torch.Generator:
    """A loader draws its workers' base seed when it starts them; from its own generator,
    not the global one, which the trainer seeds per epoch."""
    return torch.Generator().manual_seed(seed)
