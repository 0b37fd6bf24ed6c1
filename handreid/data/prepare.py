"""One-time resize of the 11k JPEGs into a training cache that is itself an 11k-layout root.

Idempotent and resumable: every output is written to a temporary name and renamed into
place, so a killed run leaves no half-written file, and a rerun skips finished files.
"""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from handreid.data.hands11k import CSV_NAME, IMAGE_DIR, read_handinfo
from handreid.data.sizes import REAL_INPUT, small_images, small_warning

log = logging.getLogger(__name__)


@dataclass
class PrepareResult:
    written: int = 0
    skipped: int = 0
    corrupt: list[str] = field(default_factory=list)
    small: list[tuple[str, int]] = field(default_factory=list)  # below the input size


def resize_one(src: str, dst: str, short_side: int) -> str:
    """Resize ``src`` so its shorter side is ``short_side``; returns 'written' or 'corrupt'."""
    try:
        with Image.open(src) as im:
            im.draft("RGB", (short_side * 2, short_side * 2))  # fast JPEG DCT downscale
            im = im.convert("RGB")
            w, h = im.size
            scale = short_side / min(w, h)
            if scale < 1:
                im = im.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
            tmp = f"{dst}.tmp{os.getpid()}"
            im.save(tmp, format="JPEG", quality=95)
        os.replace(tmp, dst)
        return "written"
    except (OSError, SyntaxError, ValueError):
        return "corrupt"


def prepare(
    root: str | Path,
    out: str | Path,
    short_side: int = 256,
    workers: int = 2,
    input_size: int = REAL_INPUT,
) -> PrepareResult:
    """Resize every listed image of ``root`` into ``out``; images already smaller than
    ``short_side`` are copied as they are, and those below ``input_size`` are warned about."""
    root, out = Path(root), Path(out)
    df = read_handinfo(root / CSV_NAME)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    result = PrepareResult()
    todo = []
    for name in df["imageName"]:
        dst = out / IMAGE_DIR / name
        if dst.is_file():
            result.skipped += 1
        else:
            todo.append((str(root / IMAGE_DIR / name), str(dst)))
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = (
            pool.map(resize_one, *zip(*todo), [short_side] * len(todo), chunksize=16)
            if todo
            else []
        )
        for (src, _), status in tqdm(
            zip(todo, jobs), total=len(todo), desc="prepare", disable=None
        ):
            if status == "written":
                result.written += 1
            else:
                result.corrupt.append(Path(src).name)
    if result.corrupt:
        log.warning(
            "skipped %d corrupt or missing images, first: %s",
            len(result.corrupt),
            ", ".join(result.corrupt[:3]),
        )
    done = (out / IMAGE_DIR / name for name in df["imageName"])
    result.small = small_images((p for p in done if p.is_file()), input_size)
    if result.small:
        log.warning(small_warning(result.small, len(df), input_size, str(out)))
    shutil.copyfile(root / CSV_NAME, out / f"{CSV_NAME}.tmp")
    os.replace(out / f"{CSV_NAME}.tmp", out / CSV_NAME)
    return result
