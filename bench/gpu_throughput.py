"""Stage-2 training step throughput and model FLOP utilisation on a GPU (random init,
random images at 224 px).

    python -m bench.gpu_throughput single --backbone ViT-B-16 --precision bf16
    python -m bench.gpu_throughput concurrent --backbone ViT-B-16 --trials 4
    python -m bench.gpu_throughput summary
    python -m bench.gpu_throughput flops --backbone ViT-B-16     # CPU is enough

Each measurement is the trainer's own step (Accelerate autocast, all five losses, AdamW,
the image tower fully unfrozen) on random tensors, batch 32 (P=8 x K=4).

MFU (model FLOP utilisation): training FLOPs per image are taken as 3 x the forward FLOPs
of the image tower (forward + backward), the forward counted by
``torch.utils.flop_counter.FlopCounterMode`` on one 224 px image (a multiply-add counts
as 2 FLOPs; the losses, heads and optimiser are left out). MFU = images/s x that / the
GPU's peak dense bf16 FLOP/s, reported for bf16 runs only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

BATCH, WARMUP, STEPS = 32, 10, 40
NUM_CLASSES = 72

# Peak dense (no sparsity) bf16 tensor-core TFLOP/s from NVIDIA's data sheets, matched in
# order against torch.cuda.get_device_name(); the first hit wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", "h100", "pcie", 756.0),
    ("H100 NVL", "h100", "nvl", 835.0),
    ("H100 SXM", "h100", "", 989.0),  # "NVIDIA H100 80GB HBM3" is the SXM part
    ("H200", "h200", "", 989.0),
    ("A100", "a100", "", 312.0),
)


def peak_tflops(device_name: str, override: float | None = None) -> tuple[float | None, str]:
    """The peak dense bf16 TFLOP/s assumed for ``device_name`` and where it came from."""
    if override is not None:
        return override, "--peak-tflops"
    name = device_name.lower()
    for label, chip, variant, tflops in PEAK_BF16_TFLOPS:
        if chip in name and variant in name:
            return tflops, f"{label} data sheet (dense bf16), from device name {device_name!r}"
    return None, f"unknown device {device_name!r}; pass --peak-tflops"


def forward_flops(visual, size: tuple[int, int], device) -> int:
    """FLOPs of one forward pass of the image tower on one image, as in a training step
    (train mode, autograd on). CPU attention dispatches to an SDPA kernel the counter has
    no formula for; it gets the same formula as the GPU kernels."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    extra = {}
    cpu_op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_op is not None:
        extra[cpu_op] = cpu_sdpa
    was_training = visual.training
    visual.train()
    counter = FlopCounterMode(display=False, custom_mapping=extra)
    with counter:
        visual(torch.zeros(1, 3, *size, device=device))
    visual.train(was_training)
    return counter.get_total_flops()


def add_mfu(row: dict, images_per_second: float, peak: float | None) -> dict:
    """Achieved training TFLOP/s and, for bf16 with a known peak, MFU (a fraction)."""
    achieved = images_per_second * row["train_flops_per_image"] / 1e12
    row["train_tflops_per_second"] = achieved
    row["mfu"] = achieved / peak if peak and row["precision"] == "bf16" else None
    return row


def measure(
    backbone: str,
    precision: str,
    barrier=None,
    *,
    batch: int = BATCH,
    warmup: int = WARMUP,
    steps: int = STEPS,
    cpu: bool = False,
    peak_override: float | None = None,
) -> dict:
    import torch
    from accelerate import Accelerator

    from handreid.config import LossConfig
    from handreid.losses import LossInputs, build_loss_set
    from handreid.models.model import build_model

    acc = Accelerator(cpu=cpu, mixed_precision="no" if precision == "fp32" else precision)
    cuda = acc.device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # as the trainer does: fixed input size
    torch.manual_seed(0)
    model = build_model(backbone, NUM_CLASSES).to(acc.device)
    losses = build_loss_set(LossConfig(), model.embed_dim, NUM_CLASSES).to(acc.device)
    model.set_stage(2, -1)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad] + list(losses.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5)
    with torch.no_grad():
        text = model.encode_text(torch.arange(NUM_CLASSES, device=acc.device)).float()
    size = model.preprocess["size"]
    fwd_flops = forward_flops(model.visual, size, acc.device)
    images = torch.randn(batch, 3, *size, device=acc.device)
    labels = (torch.arange(batch, device=acc.device) // 4) % NUM_CLASSES

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

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak, peak_source = peak_tflops(name, peak_override)
    row = {
        "backbone": backbone,
        "precision": precision,
        "device": name,
        "batch": batch,
        "steps": steps,
        "image_size": list(size),
        "images_per_second": batch * steps / seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "forward_gflops_per_image": fwd_flops / 1e9,
        "train_flops_per_image": 3 * fwd_flops,
        "peak_tflops": peak,
        "peak_source": peak_source,
    }
    return add_mfu(row, row["images_per_second"], peak)


def _worker(args):
    backbone, precision, barrier, queue, kw = args
    queue.put(measure(backbone, precision, barrier, **kw))


def concurrent(backbone: str, precision: str, n: int, **kw) -> dict:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=((backbone, precision, barrier, queue, kw),))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    first = results[0]
    aggregate = sum(r["images_per_second"] for r in results)
    row = {
        "backbone": backbone,
        "precision": precision,
        "device": first["device"],
        "trials": n,
        "aggregate_images_per_second": aggregate,
        "train_flops_per_image": first["train_flops_per_image"],
        "peak_tflops": first["peak_tflops"],
        "peak_source": first["peak_source"],
        "per_trial": results,
    }
    return add_mfu(row, aggregate, first["peak_tflops"])


def summary_line(r: dict) -> str:
    """One line per measurement: images/s, achieved TFLOP/s and MFU (bf16)."""
    what = f"{r['backbone']} {r['precision']}"
    if "trials" in r:
        what += f" x{r['trials']} concurrent (aggregate)"
        rate = r["aggregate_images_per_second"]
    else:
        rate = r["images_per_second"]
    parts = [f"{what}: {rate:.0f} img/s", f"{r['train_tflops_per_second']:.1f} TFLOP/s"]
    if r.get("mfu") is not None:
        parts.append(f"MFU {100 * r['mfu']:.1f}% of {r['peak_tflops']:.0f}")
    if r.get("peak_memory_gib") is not None:
        parts.append(f"peak {r['peak_memory_gib']:.1f} GiB")
    return ", ".join(parts)


def summarize(rows: list[dict]) -> dict:
    lines = [summary_line(r) for r in rows]
    peaks = sorted({f"{r['peak_tflops']} TFLOP/s ({r['peak_source']})" for r in rows})
    vit = [
        r
        for r in rows
        if (r["backbone"], r["precision"]) == ("ViT-B-16", "bf16") and "trials" not in r
    ]
    return {
        "result": "; ".join(lines),
        "vit_b16_bf16": {  # the headline: one trial, stage 2, bf16
            k: vit[-1][k] for k in ("images_per_second", "train_tflops_per_second", "mfu")
        }
        if vit
        else None,
        "peak_assumed": peaks,
        "flops_note": "training FLOPs/image = 3 x forward FLOPs of the image tower at the "
        "model's input size (FlopCounterMode, multiply-add = 2 FLOPs); MFU for bf16 only",
        "rows": rows,
    }


def count_flops(backbone: str) -> dict:
    """Forward FLOPs of one image through ``backbone``'s image tower, counted on the CPU."""
    import torch

    from handreid.models.model import build_model

    model = build_model(backbone, NUM_CLASSES)
    model.set_stage(2, -1)
    size = model.preprocess["size"]
    flops = forward_flops(model.visual, size, torch.device("cpu"))
    return {
        "backbone": backbone,
        "image_size": list(size),
        "forward_gflops_per_image": flops / 1e9,
        "forward_gmacs_per_image": flops / 2e9,
        "train_gflops_per_image": 3 * flops / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["single", "concurrent", "summary", "flops"])
    parser.add_argument("--backbone", default="ViT-B-16")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak dense bf16 TFLOP/s of the GPU (default: from its name; H100 SXM 989, "
        "H100 PCIe 756, H200 989)",
    )
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--cpu", action="store_true", help="smoke test only: run on the CPU")
    args = parser.parse_args()
    if args.mode == "flops":
        r = count_flops(args.backbone)
        print(
            f"{r['backbone']} at {r['image_size'][0]}x{r['image_size'][1]}: "
            f"{r['forward_gflops_per_image']:.2f} GFLOPs forward per image "
            f"({r['forward_gmacs_per_image']:.2f} GMACs), "
            f"{r['train_gflops_per_image']:.1f} GFLOPs per training image (3x)"
        )
        print(json.dumps(r))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_throughput.jsonl"
    if args.mode == "summary":
        doc = summarize([json.loads(line) for line in log.read_text().splitlines()])
        (out / "gpu_summary.json").write_text(json.dumps(doc, indent=2))
        print("peak assumed: " + "; ".join(doc["peak_assumed"]))
        print("gpu_throughput: " + doc["result"])
        return
    kw = dict(
        batch=args.batch,
        warmup=args.warmup,
        steps=args.steps,
        cpu=args.cpu,
        peak_override=args.peak_tflops,
    )
    r = (
        measure(args.backbone, args.precision, **kw)
        if args.mode == "single"
        else concurrent(args.backbone, args.precision, args.trials, **kw)
    )
    with log.open("a") as fh:
        fh.write(json.dumps(r) + "\n")
    print(summary_line(r))
    print(f"peak assumed: {r['peak_tflops']} TFLOP/s ({r['peak_source']})")


if __name__ == "__main__":
    main()
