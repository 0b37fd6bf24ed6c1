"""Stage-2 training throughput on CPU: our trainer versus a loop written like the research
code (fp32, random batches, a `.item()` per loss per step), same tiny model and losses.

    python -m bench.train_throughput
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch

from bench.common import emit
from handreid.config import load_config
from handreid.losses import LossInputs, build_loss_set
from handreid.models.model import build_model
from handreid.train.trainer import Trainer

EPOCHS = 4


def ours(backbone: str, tmp: str) -> tuple[float, float]:
    """Images/s of Trainer.train_epoch: PK batches from disk, augmentation, all five losses."""
    os.environ["HANDREID_CACHE"] = tmp
    rates = {}
    for in_memory in (False, True):
        cfg = load_config(
            "spaces/base/tiny.yml",
            {
                "model.backbone": backbone,
                "data.synth.ids": 48,
                "data.synth.per_id": 8,
                "train.stage1_epochs": 1,
                "train.stage1_cache": f"{tmp}/s1",
                "train.epochs": EPOCHS,
                "data.in_memory": in_memory,
            },
        )
        t = Trainer(cfg, f"{tmp}/{backbone}-{in_memory}")
        t.setup()
        t.stage1()
        t.setup_stage2()
        t.compute_text_features()
        rates[in_memory] = statistics.median(
            t.train_epoch(e)["images_per_second"] for e in range(1, EPOCHS + 1)
        )
    return rates[False], rates[True]


def research_loop(backbone: str, batch: int = 16, steps: int = 60) -> float:
    """fp32, random tensors as batches, one .item() per loss part per step."""
    torch.manual_seed(0)
    model = build_model(backbone, 24)
    cfg = load_config("spaces/base/tiny.yml")
    losses = build_loss_set(cfg.loss, model.embed_dim, 24)
    model.set_stage(2, -1)
    model.train()
    opt = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad] + list(losses.parameters()), lr=1e-3
    )
    with torch.no_grad():
        text = model.encode_text(torch.arange(24))
    size = model.preprocess["size"]
    log = []
    start = time.perf_counter()
    for _ in range(steps):
        images = torch.randn(batch, 3, *size)
        labels = torch.arange(batch) % (batch // 4)
        out = model.encode_image(images)
        total, parts = losses(LossInputs(out.feat, out.bn_feat, out.unit, text[labels], labels))
        opt.zero_grad()
        total.backward()
        opt.step()
        log.append({k: v.item() for k, v in parts.items()})
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in ("tiny-vit", "tiny-rn"):
            disk, memory = ours(backbone, tmp)
            results[backbone] = {
                "ours_disk": disk,
                "ours_in_memory": memory,
                "research_loop_random_batches": research_loop(backbone),
            }
    line = "; ".join(
        f"{b}: ours {r['ours_disk']:.0f} img/s from disk, {r['ours_in_memory']:.0f} in memory, "
        f"research-style loop {r['research_loop_random_batches']:.0f} on random tensors"
        for b, r in results.items()
    )
    emit("train_throughput", line, {"epochs": EPOCHS, "batch_size": 16, **results})


if __name__ == "__main__":
    main()
