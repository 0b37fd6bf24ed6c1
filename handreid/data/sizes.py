"""Image sizes against the model's input size: images smaller than it are upscaled by the
transforms, which blurs them, so ``check`` and ``prepare`` say so."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PIL import Image

REAL_INPUT = 224  # the input size of ViT-B-16 and RN50 (the tiny backbones take less)


def shorter_side(path: str | Path) -> int | None:
    """The image's shorter side in pixels, read from its header; None if unreadable."""
    try:
        with Image.open(path) as im:
            return min(im.size)
    except (OSError, SyntaxError, ValueError):
        return None


def small_images(paths: Iterable[Path], side: int) -> list[tuple[str, int]]:
    """(name, shorter side) of each readable image whose shorter side is below ``side``."""
    out = []
    for path in paths:
        found = shorter_side(path)
        if found is not None and found < side:
            out.append((Path(path).name, found))
    return out


def small_warning(small: list[tuple[str, int]], total: int, side: int, where: str) -> str:
    """One line on the images below the input size, or '' when there are none."""
    if not small:
        return ""
    name, found = min(small, key=lambda s: s[1])
    return (
        f"{where}: {len(small)} of {total} images have a shorter side below {side} px, the "
        f"model's input size (smallest: {name}, {found} px); they are upscaled and blurred in "
        "training: use larger copies (e.g. `handreid-data prepare --short-side 256` from the "
        "full-size images), or set --input-size for a smaller model"
    )
