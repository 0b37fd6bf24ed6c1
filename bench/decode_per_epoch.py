"""JPEG decode time per stage-2 epoch of a run: its training batches and its validation
(the held-out images and the train images as their gallery), on full-size 1600x1200
JPEGs and on the `handreid-data prepare` cache (shorter side 256), 224 px (ViT-B-16).

    python -m bench.decode_per_epoch [--ids 40] [--per-id 8] [--epochs 3]

Decoding is timed in this process (no loader workers): every ``read_image`` call's
seconds, summed per epoch. The run's data come from ``handreid.train.data.RunData``, as a
trainer builds them, so running the same command on an older checkout measures that
checkout's behaviour.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from bench.common import emit


def full_size_hands(root: Path, ids: int, per_id: int) -> None:
    """Synthetic hands upscaled to the 11k's 1600x1200 JPEGs."""
    from handreid.data.synth import generate

    generate(root, ids=ids, per_id=per_id, size=(400, 300), accessory_rate=0)
    for path in (root / "Hands").iterdir():
        with Image.open(path) as im:
            im.resize((1600, 1200), Image.BICUBIC).save(path, quality=92)


def run_data(root: Path):
    import open_clip

    import handreid.data.build as build
    from handreid.config import load_config
    from handreid.train.data import RunData

    cfg = load_config(
        Path(__file__).parents[1] / "spaces" / "base" / "vitb16.yml",
        {"data.root": str(root), "data.split": "random", "data.num_workers": 0},
    )
    split = build.build_split(cfg.data, cfg.eval, root=root)
    pre = {
        "size": (224, 224),
        "mean": open_clip.OPENAI_DATASET_MEAN,
        "std": open_clip.OPENAI_DATASET_STD,
    }
    return RunData(cfg, root, split, split.labels(), pre, pin_memory=False), split


def decode_seconds(root: Path, epochs: int) -> dict:
    """Seconds and files decoded by setting the run's data up and by each epoch."""
    import handreid.data.dataset as dataset

    spent = {"seconds": 0.0, "files": 0}
    real = dataset.read_image

    def timed(path):
        start = time.perf_counter()
        try:
            return real(path)
        finally:
            spent["seconds"] += time.perf_counter() - start
            spent["files"] += 1

    dataset.read_image = timed
    try:
        data, split = run_data(root)
        rows = []
        for epoch in range(1, epochs + 1):
            before = dict(spent)
            data.sampler.set_epoch(epoch)
            for _ in data.train_loader:  # the epoch's batches
                pass
            for loader in (data.val_loader, data.gallery_loader):  # its validation
                for _ in loader:
                    pass
            rows.append({k: spent[k] - before[k] for k in spent})
    finally:
        dataset.read_image = real
    return {"train": len(split.train), "val": len(split.val), "epochs": rows}


def main(argv: list[str] | None = None) -> int:
    from handreid.data.prepare import prepare

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ids", type=int, default=40)
    parser.add_argument("--per-id", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        raw, prepared = Path(tmp) / "raw", Path(tmp) / "prepared"
        full_size_hands(raw, args.ids, args.per_id)
        prepare(raw, prepared, short_side=256, workers=1)
        for name, root in (("raw_1600x1200", raw), ("prepared_256", prepared)):
            results[name] = r = decode_seconds(root, args.epochs)
            per_epoch = [f"{e['seconds']:.2f} s ({e['files']} files)" for e in r["epochs"]]
            print(
                f"{name}: {r['train']} train + {r['val']} validation images; decode per "
                f"epoch: {', '.join(per_epoch)}"
            )
    first = results["raw_1600x1200"]["epochs"]
    line = (
        f"raw 1600x1200: epoch 1 {first[0]['seconds']:.2f} s, later epochs "
        f"{first[-1]['seconds']:.2f} s of JPEG decoding"
    )
    emit("decode_per_epoch", line, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
