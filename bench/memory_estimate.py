"""The memory estimate (``handreid.train.memory``) against a measured peak (issue 25).

    python -m bench.memory_estimate --backbone ViT-B-16 RN50 --unfreeze -1 1
    python -m bench.memory_estimate --backbone ViT-B-16 --device cuda    # bench/gpu_check.sh

Measured, per backbone and unfrozen depth, from a model with random weights at 224 px:
one stage-1 step (the text tower over ``--stage1-batch`` labels x 4 templates, SupCon both
ways, AdamW on the context) and two stage-2 steps (the image tower at ``--batch``, all five
losses, AdamW over the trainable parameters and the heads, SGD on the centers), bf16 under
CUDA's autocast policy (emulated on the CPU), as the trainer runs them. On a GPU the
measured peak is ``torch.cuda.max_memory_allocated`` (it counts neither the CUDA context
nor the allocator's cached blocks, as the estimate's peak does not); on the CPU it is the
weights plus the peak of the bytes of live tensors made during the steps (``LiveBytes``).
"""

from __future__ import annotations

import argparse
import json
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bench.common import emit, machine

GiB = 1024**3
TEMPLATES = 4  # the real base configs' prompt templates
CLASSES = 72  # training identities of 11k dorsal_r


class LiveBytes(TorchDispatchMode):
    """The bytes of tensor storages that ops create while the mode is on, and their peak:
    each op output whose storage is new (not one of the op's inputs', as views and in-place
    ops give) is counted until Python frees the storage. What existed before (the weights)
    is not counted."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {a.untyped_storage()._cdata for a in _tensors((args, kwargs))}
        for t in _tensors(out):
            storage = t.untyped_storage()
            key = storage._cdata
            if key in given or key in self.live or storage.nbytes() == 0:
                continue
            self.live[key] = storage.nbytes()
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
            weakref.finalize(storage, self._freed, key)
        return out

    def _freed(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def build(backbone: str, device: torch.device):
    from handreid.config import LossConfig
    from handreid.losses import build_loss_set
    from handreid.models.model import build_model
    from handreid.train.memory import TEMPLATE

    torch.manual_seed(0)
    templates = (TEMPLATE,) * TEMPLATES
    model = build_model(backbone, CLASSES, templates=templates, activation="quick_gelu")
    losses = build_loss_set(LossConfig(), model.embed_dim, CLASSES)
    return model.to(device), losses.to(device)


def text_features(model) -> torch.Tensor:
    """Per-class text features, as the trainer computes them once before stage 2."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return model.encode_text(torch.arange(CLASSES, device=device)).float()


def stage2_steps(model, losses, text, unfreeze: int, batch: int, autocast, steps: int = 2):
    from handreid.config import OptimConfig
    from handreid.losses import LossInputs
    from handreid.train.optim import make_optimizer, stage2_groups

    device = next(model.parameters()).device
    model.set_stage(2, unfreeze)
    model.train()
    opt = make_optimizer("adamw", stage2_groups(model, losses, OptimConfig()))
    centers = torch.optim.SGD(losses.center_parameters(), lr=0.5)
    images = torch.randn(batch, 3, *model.preprocess["size"], device=device)
    labels = torch.arange(batch, device=device) // 4
    for _ in range(steps):
        with autocast():
            out = model.encode_image(images)
            unit = out.unit.float()
            inputs = LossInputs(out.feat.float(), out.bn_feat.float(), unit, text[labels], labels)
            loss, _ = losses(inputs)
        loss.backward()
        opt.step()
        centers.step()
        opt.zero_grad(set_to_none=True)
        centers.zero_grad(set_to_none=True)
        del out, unit, inputs, loss


def stage1_step(model, batch: int, autocast) -> None:
    from handreid.losses.functional import supcon
    from handreid.train.optim import make_optimizer

    device = next(model.parameters()).device
    model.set_stage(1)
    opt = make_optimizer("adamw", [{"params": [model.prompt.ctx], "lr": 1e-4}])
    labels = torch.arange(batch, device=device) % CLASSES
    feats = torch.nn.functional.normalize(
        torch.randn(batch, model.embed_dim, device=device), dim=-1
    )
    with autocast():
        text = model.encode_text(labels).float()
        loss = supcon(feats, text, labels, labels, 0.05) + supcon(text, feats, labels, labels, 0.05)
    loss.backward()
    opt.step()
    model.prompt.ctx.requires_grad_(False)


def measure(backbone: str, unfreeze: int, batch: int, stage1_batch: int, device: str) -> dict:
    from handreid.train.cuda_autocast import cuda_autocast
    from handreid.train.memory import MemoryInputs, estimate, tensor_bytes

    dev = torch.device(device)
    inputs = MemoryInputs(
        backbone,
        unfreeze_blocks=unfreeze,
        batch_size=batch,
        stage1_batch_size=stage1_batch,
        quick_gelu=True,
        templates=TEMPLATES,
        num_classes=CLASSES,
    )
    start = time.perf_counter()
    est = estimate(inputs)
    est_seconds = time.perf_counter() - start
    model, losses = build(backbone, dev)
    weights = tensor_bytes([*model.parameters(), *model.buffers(), *losses.parameters()])
    if dev.type == "cuda":
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = cuda_autocast
    text = text_features(model)  # before stage 2, outside the steps measured
    measured = {}
    for stage, run in (
        ("stage1", lambda: stage1_step(model, stage1_batch, autocast)),
        ("stage2", lambda: stage2_steps(model, losses, text, unfreeze, batch, autocast)),
    ):
        start = time.perf_counter()
        measured[stage] = _peak(run, dev, weights)
        measured[f"{stage}_seconds"] = time.perf_counter() - start
    return {
        "backbone": backbone,
        "unfreeze_blocks": unfreeze,
        "batch": batch,
        "stage1_batch": stage1_batch,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "estimate_seconds": est_seconds,
        "estimate": {
            "weights": est.weights,
            "gradients": est.gradients,
            "optimiser": est.optimiser,
            "activations": est.activations,
            "stage1_activations": est.stage1_activations,
            "stage1": est.stage1,
            "stage2": est.stage2,
            "gpu_share": est.gpu_bytes(),
        },
        "measured": measured,
    }


def _peak(run, dev: torch.device, weights: int) -> int:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        run()
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev)
    with LiveBytes() as live:
        run()
    return weights + live.peak


def line(row: dict) -> str:
    est, got = row["estimate"], row["measured"]
    cells = [
        f"{s} estimated {_size(est[s])} vs measured {_size(got[s])} ({est[s] / got[s]:.2f}x)"
        for s in ("stage1", "stage2")
    ]
    return f"{row['backbone']} unfreeze {row['unfreeze_blocks']} batch {row['batch']}: " + (
        "; ".join(cells)
    )


def _size(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 4 else f"{n / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", nargs="+", default=["ViT-B-16", "RN50"])
    p.add_argument("--unfreeze", type=int, nargs="+", default=[-1, 1])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--stage1-batch", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (bench/gpu_check.sh)")
    p.add_argument("--out", default=None, help="folder for the result file")
    p.add_argument("--name", default="memory_estimate")
    args = p.parse_args(argv)
    rows = []
    for backbone in args.backbone:
        for unfreeze in args.unfreeze:
            rows.append(measure(backbone, unfreeze, args.batch, args.stage1_batch, args.device))
            print(line(rows[-1]), flush=True)
    summary = "; ".join(line(r) for r in rows)
    if args.out:  # bench/gpu_check.sh: next to its other files
        doc = {"benchmark": args.name, "result": summary, "machine": machine(), "rows": rows}
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"{args.name}.json").write_text(json.dumps(doc, indent=2))
        print(f"{args.name}: {summary}")
    else:
        emit(args.name, summary, {"rows": rows})


if __name__ == "__main__":
    main()
