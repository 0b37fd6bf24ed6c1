"""Image datasets over a list of :class:`Item`, read from disk or held decoded in memory."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
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
        cache_size: tuple[int, int] | None = None,
    ):
        self.root = Path(root)
        self.items = list(items)
        self.transform = transform
        self.targets = [labels.get(it.pid, -1) if labels else -1 for it in self.items]
        self.cache: list[torch.Tensor] | None = None
        if cache_size is not None:
            self.cache = preload(self.root, self.items, cache_size)

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[index]
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


def preload(root: Path, items: Sequence[Item], size: tuple[int, int]) -> list[torch.Tensor]:
    """Decode and resize every image once; keep uint8 tensors (no JPEG decode per epoch)."""
    resize = v2.Resize(size, antialias=True)
    out = []
    for it in tqdm(items, desc="decode", leave=False, disable=len(items) < 500 or None):
        out.append(resize(read_image(root / it.path)).contiguous())
    return out
