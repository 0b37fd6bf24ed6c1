"""10-split evaluation of 1,042 test images (the real dorsal_r protocol): features once
versus once per split, and the vectorised metric versus the naive per-query loop.

    python -m bench.eval_speed
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import Timer, emit
from handreid.data.dataset import ImageDataset
from handreid.data.hands11k import aspect_records, read_handinfo
from handreid.data.splits import make_split
from handreid.data.synth import generate
from handreid.data.transforms import build_test_transform
from handreid.eval.evaluator import evaluate_protocol, extract_features
from handreid.eval.metrics import rank_k_and_map, rank_k_and_map_naive
from handreid.models.model import build_model

CSV = Path(__file__).resolve().parents[1] / "tests" / "data" / "HandInfo.csv"


def dataset_with_real_protocol(root: Path):
    """The real HandInfo.csv's dorsal_r split, each image drawn as a synthetic hand."""
    split = make_split(aspect_records(read_handinfo(CSV), "dorsal_r"))
    images = split.test.images
    generate(root / "pool", ids=len({it.pid for it in images}), per_id=1, size=(160, 120))
    (root / "Hands").mkdir()
    pool = sorted((root / "pool" / "Hands").iterdir())
    for i, item in enumerate(images):
        (root / item.path).write_bytes(pool[i % len(pool)].read_bytes())
    return split


def main() -> None:
    torch.manual_seed(0)
    model = build_model("tiny-vit", 8).eval()
    with tempfile.TemporaryDirectory() as tmp:
        split = dataset_with_real_protocol(Path(tmp))
        pre = model.preprocess
        ds = ImageDataset(
            tmp, split.test.images, build_test_transform(pre["size"], pre["mean"], pre["std"])
        )
        loader = torch.utils.data.DataLoader(ds, batch_size=128)
        device = torch.device("cpu")
        with Timer() as once:
            feats = extract_features(model, loader, device)
            m_once = evaluate_protocol(feats, split.test)
        with Timer() as per_split:
            maps = []
            for s in split.test.splits:  # what the research code did: re-extract per split
                f = extract_features(model, loader, device)
                one = type(split.test)(split.test.images, [s])
                maps.append(evaluate_protocol(f, one)["mAP"])
        assert abs(np.mean(maps) - m_once["mAP"]) < 1e-6
        ids = np.array([it.pid for it in split.test.images])
        s0 = split.test.splits[0]
        sim = feats.numpy()[s0.query] @ feats.numpy()[s0.gallery].T
        with Timer() as vec:
            for _ in range(10):
                rank_k_and_map(sim, ids[s0.query], ids[s0.gallery])
        with Timer() as naive:
            for _ in range(10):
                rank_k_and_map_naive(sim, ids[s0.query], ids[s0.gallery])
    n = len(split.test.images)
    line = (
        f"{n} images x 10 splits: features once {once.seconds:.2f}s vs per split "
        f"{per_split.seconds:.2f}s ({per_split.seconds / once.seconds:.1f}x); metric over "
        f"10 splits vectorised {vec.seconds * 1000:.0f} ms vs naive loop {naive.seconds:.2f}s "
        f"({naive.seconds / vec.seconds:.0f}x)"
    )
    emit(
        "eval_speed",
        line,
        {
            "images": n,
            "once_s": once.seconds,
            "per_split_s": per_split.seconds,
            "metric_vectorised_s": vec.seconds,
            "metric_naive_s": naive.seconds,
            "queries": int(len(s0.query)),
            "gallery": int(len(s0.gallery)),
        },
    )


if __name__ == "__main__":
    main()
