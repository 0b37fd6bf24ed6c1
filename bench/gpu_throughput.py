"""Stage-2 training step throughput on a GPU (random init, random images at 224 px).

    python -m bench.gpu_throughput single --backbone ViT-B-16 --precision bf16
    python -m bench.gpu_throughput concurrent --backbone ViT-B-16 --trials 4
    python -m bench.gpu_throughput summary

Each measurement is the trainer's own step (Accelerate autocast, all five losses, AdamW,
the image tower fully unfrozen) on random tensors, batch 32 (P=8 x K=4).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

BATCH, WARMUP, STEPS = 32, 10, 40


def measure(backbone: str, precision: str, barrier=None) -> dict:
    import torch
    from accelerate import Accelerator

    from handreid.config import LossConfig
    from handreid.losses import LossInputs, build_loss_set
    from handreid.models.model import build_model

    acc = Accelerator(mixed_precision="no" if precision == "fp32" else precision)
    torch.manual_seed(0)
    model = build_model(backbone, 72).to(acc.device)
    losses = build_loss_set(LossConfig(), model.embed_dim, 72).to(acc.device)
    model.set_stage(2, -1)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad] + list(losses.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5)
    with torch.no_grad():
        text = model.encode_text(torch.arange(72, device=acc.device)).float()
    size = model.preprocess["size"]
    images = torch.randn(BATCH, 3, *size, device=acc.device)
    labels = (torch.arange(BATCH, device=acc.device) // 4) % 72

    def step():
        with acc.autocast():
            out = model.encode_image(images)
            total, _ = losses(
                LossInputs(
                    out.feat.float(), out.bn_feat.float(), out.unit.float(), text[labels], labels
                )
            )
        acc.backward(total)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(WARMUP):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "backbone": backbone,
        "precision": precision,
        "images_per_second": BATCH * STEPS / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def _worker(args):
    backbone, precision, barrier, queue = args
    queue.put(measure(backbone, precision, barrier))


def concurrent(backbone: str, precision: str, n: int) -> dict:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=((backbone, precision, barrier, queue),)) for _ in range(n)
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return {
        "backbone": backbone,
        "precision": precision,
        "trials": n,
        "aggregate_images_per_second": sum(r["images_per_second"] for r in results),
        "per_trial": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["single", "concurrent", "summary"])
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_throughput.jsonl"
    if args.mode == "summary":
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        for r in rows:
            print(json.dumps(r))
        return
    r = (
        measure(args.backbone, args.precision)
        if args.mode == "single"
        else concurrent(args.backbone, args.precision, args.trials)
    )
    with log.open("a") as fh:
        fh.write(json.dumps(r) + "\n")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
