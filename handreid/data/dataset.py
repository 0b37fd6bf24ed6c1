"""Image datasets over a list of :class:`Item`, read from disk or held decoded in memory."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from tqdm import tqdm

from handreid.data.hands11k import Item
from handreid.errors import DataError

log = logging.getLogger(__name__)


def read_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to a uint8 (3, H, W) tensor; a corrupt file raises DataError."""
    try:
        data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
        return decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as err:
        raise DataError(f"{path}: cannot decode image ({str(err).splitlines()[0]})") from None


class ImageDataset(Dataset):
    """Yields ``(image, label, index)``. ``labels`` maps identity -> int (-1 if absent)."""

    def __init__(
        self,
        root: str | Path,
        items: Sequence[Item],
        transform: Callable[[torch.Tensor], torch.Tensor],
        labels: dict[str, int] | None = None,
        *,
        decoded: torch.Tensor | None = None,
    ):
        """``decoded``: the images already decoded, one uint8 (3, H, W) row per item (see
        :func:`decode_all`); ``transform`` then gets those instead of the files."""
        self.root = Path(root)
        self.items = list(items)
        self.transform = transform
        self.targets = [labels.get(it.pid, -1) if labels else -1 for it in self.items]
        if decoded is not None and len(decoded) != len(self.items):
            raise ValueError(f"{len(decoded)} decoded images for {len(self.items)} items")
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int) -> torch.Tensor:
        if self.decoded is not None:
            return self.decoded[index]
        return read_image(self.root / self.items[index].path)

    def __getitem__(self, key: int | tuple[int, int]):
        """``key``: an index, or ``(index, seed)`` from :class:`SeededDraws`: the transform's
        random draws then come from that seed alone (the global generator is left as it was)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.image(index)
        if seed is None:
            return self.transform(image), self.targets[index], index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), self.targets[index], index


def decode_all(
    root: Path, items: Sequence[Item], size: tuple[int, int], workers: int = 0
) -> torch.Tensor:
    """Decode every image once, resized to ``size`` as the transforms would: one uint8
    (N, 3, H, W) tensor of N x 3 x H x W bytes, filled by ``workers`` loader processes."""
    out = torch.empty((len(items), 3, *size), dtype=torch.uint8)
    dataset = ImageDataset(root, items, v2.Resize(size, antialias=True))
    # its own generator: starting the workers draws nothing from the global one
    loader = DataLoader(dataset, batch_size=32, num_workers=workers, generator=torch.Generator())
    for images, _labels, index in tqdm(
        loader, desc="decode", leave=False, disable=len(items) < 500 or None
    ):
        out[index] = images
    return out
