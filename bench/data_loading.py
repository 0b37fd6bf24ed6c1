"""Data-loading throughput on this machine's cores: raw 1600x1200 JPEGs versus the
`handreid-data prepare` cache (shorter side 256) versus decoded uint8 tensors in memory,
through the training transform at 224 px (ViT-B/16's input) in a DataLoader.

    python -m bench.data_loading
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from bench.common import emit
from handreid.data.dataset import ImageDataset, decode_all
from handreid.data.hands11k import aspect_records, read_handinfo
from handreid.data.prepare import prepare
from handreid.data.synth import generate
from handreid.data.transforms import build_train_transform

N_IMAGES = 160
SIZE = (224, 224)
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def raw_dataset(root: Path) -> None:
    """Synthetic hands upscaled to the 11k's 1600x1200 JPEGs."""
    generate(root, ids=N_IMAGES // 8, per_id=8, size=(400, 300), accessory_rate=0)
    for path in (root / "Hands").iterdir():
        with Image.open(path) as im:
            im.resize((1600, 1200), Image.BICUBIC).save(path, quality=92)


def rate(dataset, workers: int) -> float:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=32, num_workers=workers, shuffle=True, persistent_workers=workers > 0
    )
    for _ in loader:  # warm-up epoch (worker start, page cache)
        pass
    start = time.perf_counter()
    n = sum(len(batch[0]) for _ in range(2) for batch in loader)
    return n / (time.perf_counter() - start)


def main() -> None:
    workers = min(2, os.cpu_count() or 1)
    tf = build_train_transform(SIZE, MEAN, STD, pad=10, random_erasing=0.5)
    tf_cached = build_train_transform(SIZE, MEAN, STD, pad=10, random_erasing=0.5, resize=False)
    with tempfile.TemporaryDirectory() as tmp:
        raw, prepared = Path(tmp) / "raw", Path(tmp) / "prepared"
        raw_dataset(raw)
        start = time.perf_counter()
        prepare(raw, prepared, short_side=256, workers=workers)
        prepare_s = time.perf_counter() - start
        items = aspect_records(read_handinfo(raw / "HandInfo.csv"), "dorsal_r").items
        decoded = decode_all(prepared, items, SIZE, workers)
        rates = {
            "raw_1600x1200": rate(ImageDataset(raw, items, tf), workers),
            "prepared_256": rate(ImageDataset(prepared, items, tf), workers),
            "in_memory": rate(ImageDataset(prepared, items, tf_cached, decoded=decoded), workers),
        }
        raw_kb = sum(p.stat().st_size for p in (raw / "Hands").iterdir()) / len(items) / 1024
    line = (
        f"{workers} workers, 224 px train transform: raw 1600x1200 {rates['raw_1600x1200']:.0f} "
        f"img/s, prepared {rates['prepared_256']:.0f} img/s "
        f"({rates['prepared_256'] / rates['raw_1600x1200']:.1f}x), in memory "
        f"{rates['in_memory']:.0f} img/s ({rates['in_memory'] / rates['raw_1600x1200']:.1f}x); "
        f"prepare {len(items) / prepare_s:.0f} img/s"
    )
    emit(
        "data_loading",
        line,
        {
            "images": len(items),
            "workers": workers,
            "raw_kb": raw_kb,
            "prepare_img_per_s": len(items) / prepare_s,
            **rates,
        },
    )


if __name__ == "__main__":
    main()
