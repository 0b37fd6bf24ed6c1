"""The data of one run: its datasets and loaders, built from the config and the split.

The train images go through the training transform in PK batches (``PKSampler``), each
draw with its own augmentation seed (``SeededDraws``: resume is exact with workers); the
validation images and the train images as the validation gallery go through the test
transform, in loaders built once per run. With ``data.in_memory`` the images are decoded
once, at the model's input size, and the gallery shares the train set's decoded images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from handreid.config import Config
from handreid.data.dataset import ImageDataset
from handreid.data.sampler import PKSampler, SeededDraws
from handreid.data.splits import DataSplit
from handreid.data.transforms import build_test_transform, build_train_transform


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
        d, pre = self.cfg.data, self.preprocess
        size, mean, std = pre["size"], pre["mean"], pre["std"]
        cache = size if d.in_memory else None
        resize = cache is None
        train_tf = build_train_transform(
            size,
            mean,
            std,
            flip_prob=d.flip_prob,
            pad=d.pad,
            color_jitter=d.color_jitter,
            random_erasing=d.random_erasing,
            resize=resize,
        )
        self.test_tf = build_test_transform(size, mean, std, resize=resize)
        self.train_set = ImageDataset(
            self.root, self.split.train, train_tf, self.labels, cache_size=cache
        )
        self.gallery_set = ImageDataset(self.root, self.split.train, self.test_tf, self.labels)
        if cache is not None:
            self.gallery_set.cache = self.train_set.cache  # same decoded images, other transform
        self.val_set = self.eval_dataset(self.split.val)
        self.val_loader = self.plain_loader(self.val_set, persistent=True)
        self.gallery_loader = self.plain_loader(self.gallery_set, persistent=True)
        t = self.cfg.train
        pk = PKSampler(
            self.train_set.targets, t.batch_size // t.num_instances, t.num_instances, seed=t.seed
        )
        self.sampler = SeededDraws(pk, seed=t.seed)  # each draw's augmentation seed
        self.train_loader = DataLoader(
            self.train_set,
            batch_size=t.batch_size,
            sampler=self.sampler,
            num_workers=d.num_workers,
            drop_last=True,
            pin_memory=self.pin_memory,
            persistent_workers=d.num_workers > 0,
            generator=own_generator(t.seed),
        )

    def eval_dataset(self, items) -> ImageDataset:
        """Images seen through the test transform; decoded once when ``data.in_memory``
        (whose transforms expect images already at the model's size)."""
        d = self.cfg.data
        cache = self.preprocess["size"] if d.in_memory else None
        return ImageDataset(self.root, items, self.test_tf, self.labels, cache_size=cache)

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


def own_generator(seed: int) -> torch.Generator:
    """A loader draws its workers' base seed when it starts them; from its own generator,
    not the global one, which the trainer seeds per epoch."""
    return torch.Generator().manual_seed(seed)
