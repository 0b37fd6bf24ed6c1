"""Train and test transforms on uint8 image tensors, with the model's mean/std in both."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def _normalize(mean, std) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def build_train_transform(
    size: tuple[int, int],
    mean,
    std,
    *,
    flip_prob: float = 0.5,
    pad: int = 10,
    color_jitter: float = 0.0,
    random_erasing: float = 0.5,
    resize: bool = True,
) -> v2.Compose:
    steps: list = [v2.Resize(size, antialias=True)] if resize else []
    if flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(flip_prob))
    if pad > 0:
        steps += [v2.Pad(pad), v2.RandomCrop(size)]
    if color_jitter > 0:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    steps += _normalize(mean, std)
    if random_erasing > 0:
        steps.append(v2.RandomErasing(random_erasing))
    return v2.Compose(steps)


def build_test_transform(size: tuple[int, int], mean, std, *, resize: bool = True) -> v2.Compose:
    steps: list = [v2.Resize(size, antialias=True)] if resize else []
    return v2.Compose(steps + _normalize(mean, std))
