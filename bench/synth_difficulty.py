"""How hard the synthetic hands are: test mAP (10 splits) of random features, raw pixels,
an untrained tiny CLIP and a tiny CLIP trained briefly, on the demo's synthetic data.

    python -m bench.synth_difficulty
"""

from __future__ import annotations

import os
import tempfile

import torch
import torch.nn.functional as F

from bench.common import emit
from handreid.config import load_config
from handreid.data.dataset import ImageDataset
from handreid.data.transforms import build_test_transform
from handreid.eval.evaluator import evaluate_protocol
from handreid.train.trainer import Trainer, evaluate_test, train
from search.space import load_space


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HANDREID_CACHE"] = tmp
        base = load_space("spaces/demo.yml").trial_config({})  # the demo's data and budget
        cfg = load_config(
            "spaces/base/tiny.yml",
            {
                "data.synth.ids": base.data.synth.ids,
                "data.synth.per_id": base.data.synth.per_id,
                "train.epochs": 15,
                "train.patience": 0,
                "train.stage1_cache": f"{tmp}/s1",
            },
        )
        t = Trainer(cfg, f"{tmp}/untrained")
        t.setup()
        protocol = t.split.test
        n = len(protocol.images)
        results = {"random": evaluate_protocol(F.normalize(torch.randn(n, 64), dim=1), protocol)}
        raw = ImageDataset(
            t.root, protocol.images, build_test_transform((48, 64), (0.5,) * 3, (0.25,) * 3)
        )
        pixels = torch.stack([raw[i][0] for i in range(n)]).flatten(1)
        results["raw_pixels"] = evaluate_protocol(
            F.normalize(pixels - pixels.mean(0), dim=1), protocol
        )
        t.save_best()
        results["tiny_clip_untrained"] = evaluate_test(cfg, f"{tmp}/untrained", trainer=t)
        results["tiny_clip_trained_15_epochs"] = train(cfg, f"{tmp}/trained")["test"]
    summary = {
        k: {"mAP": v["mAP"], "mAP_std": v["mAP_std"], "rank1": v["rank1"]}
        for k, v in results.items()
    }
    line = ", ".join(f"{k} {v['mAP']:.1f}±{v['mAP_std']:.1f}" for k, v in summary.items())
    emit(
        "synth_difficulty",
        f"test mAP on the demo's synthetic hands: {line}",
        {"ids": cfg.data.synth.ids, "per_id": cfg.data.synth.per_id, **summary},
    )


if __name__ == "__main__":
    main()
