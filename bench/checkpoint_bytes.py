"""Bytes written per epoch by a search trial's checkpointing, at full size.

    python -m bench.checkpoint_bytes [--backbones ViT-B-16 RN50] [--unfreeze 2 -1]

For each backbone and ``unfreeze_blocks``: the trainer's real state (random init has the
same shapes as OpenAI's weights), AdamW moments created by one step, then one epoch's
checkpointing on an improving epoch, counted with ``/proc/self/io`` (``wchar``):

- after: the trainer writes ``checkpoint.pt`` once and links ``best.pt`` to it; the trial
  hands Tune a manifest (``search.trainable.hand_over``), which Tune copies to storage
  (re-enacted with ``shutil.copytree``, as Tune's pyarrow copy does);
- before (the code up to issue 13, re-enacted): full state dicts in ``checkpoint.pt`` and
  ``best.pt``, both copied to a temporary folder, and that folder copied by Tune.

The reference is the trainable state: trainable parameters plus AdamW's two moments.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench.common import emit


def wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def trainer_at_full_size(backbone: str, unfreeze: int, out: Path):
    import torch

    from handreid.config import load_config
    from handreid.train.trainer import Trainer

    base = "vitb16" if backbone == "ViT-B-16" else "rn50"
    cfg = load_config(
        Path(__file__).parents[1] / "spaces" / "base" / f"{base}.yml",
        {
            "data.root": None,
            "data.synth.ids": 24,
            "data.synth.per_id": 4,
            "data.num_workers": 0,
            "model.pretrained": "none",
            "model.unfreeze_blocks": unfreeze,
            "train.cpu": True,
            "train.mixed_precision": "no",
            "eval.n_splits": 1,
        },
    )
    trainer = Trainer(cfg, out)
    trainer.setup()
    trainer.setup_stage2()
    for group in trainer.optimizer.param_groups:  # one step: AdamW creates its moments
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    trainer.progress.epoch = trainer.progress.best_epoch = 1
    return trainer


def trainable_bytes(trainer) -> int:
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    params += trainer.losses.center_parameters()
    return 3 * sum(p.numel() * p.element_size() for p in params)  # weights + 2 moments


def after(trainer, out: Path, storage: Path) -> int:
    from handreid.train import checkpoint as ckpt
    from search.trainable import drop_states, hand_over

    start = wchar()
    ckpt.atomic_save(trainer.state_dict(), out / "checkpoint.pt")
    trainer.save_best(out / "checkpoint.pt")
    with tempfile.TemporaryDirectory() as tmp:
        hand_over(out, Path(tmp), 1, 1, durable=True)
        shutil.copytree(tmp, storage / "after")  # Tune's copy to storage
    drop_states(out, {1})
    return wchar() - start


def before(trainer, out: Path, storage: Path) -> int:
    import torch

    from handreid.train import checkpoint as ckpt

    model = trainer.accelerator.unwrap_model(trainer.model)
    state = {**trainer.state_dict(), "model": model.state_dict()}
    start = wchar()
    ckpt.atomic_save(state, out / "old_checkpoint.pt")
    best = {"model": model.state_dict(), "losses": trainer.losses.state_dict(), "epoch": 1}
    torch.save(best, out / "old_best.pt")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("old_checkpoint.pt", "old_best.pt"):
            shutil.copyfile(out / name, Path(tmp) / name)
        shutil.copytree(tmp, storage / "before")
    return wchar() - start


def measure(backbone: str, unfreeze: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out, storage = Path(tmp) / "trial", Path(tmp) / "storage"
        storage.mkdir()
        trainer = trainer_at_full_size(backbone, unfreeze, out)
        ref = trainable_bytes(trainer)
        return {
            "backbone": backbone,
            "unfreeze_blocks": unfreeze,
            "trainable_state_mib": ref / 2**20,
            "before_mib": before(trainer, out, storage) / 2**20,
            "after_mib": after(trainer, out, storage) / 2**20,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", nargs="+", default=["ViT-B-16", "RN50"])
    parser.add_argument("--unfreeze", nargs="+", type=int, default=[2, -1])
    args = parser.parse_args(argv)
    rows = [measure(b, n) for b in args.backbones for n in args.unfreeze]
    for r in rows:
        r["before_ratio"] = r["before_mib"] / r["trainable_state_mib"]
        r["after_ratio"] = r["after_mib"] / r["trainable_state_mib"]
        print(
            f"{r['backbone']:9} unfreeze {r['unfreeze_blocks']:>2}: trainable state "
            f"{r['trainable_state_mib']:7.1f} MiB; written per epoch before "
            f"{r['before_mib']:7.1f} MiB ({r['before_ratio']:.2f}x), after "
            f"{r['after_mib']:7.1f} MiB ({r['after_ratio']:.2f}x)"
        )
    worst = max(r["after_ratio"] for r in rows)
    emit("checkpoint_bytes", f"after: at most {worst:.2f}x the trainable state", {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
