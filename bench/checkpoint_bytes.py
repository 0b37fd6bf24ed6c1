"""Bytes a search trial's checkpointing writes over a whole trial, at full size.

    python -m bench.checkpoint_bytes [--backbones ViT-B-16 RN50] [--unfreeze 2 -1]
                                     [--epochs 30] [--every 5]

For each backbone and ``unfreeze_blocks``: the trainer's real state (random init has the
same shapes as OpenAI's weights), AdamW moments created by one step, then ``--epochs``
epochs of the trainer's own checkpointing (``Trainer.save_epoch``) and the trial's
hand-over to Tune (``search.trainable.hand_over``, Tune's copy to storage re-enacted with
``shutil.copytree``, ``drop_states``), counted with ``/proc/self/io`` (``wchar``):

- every epoch (``train.checkpoint_every: 1``, the code before issue 25): the resumable
  state each epoch, ``best.pt`` a hard link to an improving epoch's state;
- every ``--every`` epochs (the real base configs): the state at those epochs and the
  last, ``best.pt`` as a hard link when such an epoch improves, else the best epoch's
  tensors, written once before the next state.

Two validation curves: one that improves every epoch, and the worst case for the second
scheme, one that improves at every epoch except those that write the state (each state
then also writes the best epoch's tensors). The reference is the trainable state:
trainable parameters plus AdamW's two moments.
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
    return trainer


def trainable_bytes(trainer) -> int:
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    params += trainer.losses.center_parameters()
    return 3 * sum(p.numel() * p.element_size() for p in params)  # weights + 2 moments


def one_trial(trainer, out: Path, storage: Path, epochs: int, every: int, curve) -> int:
    """Bytes written by ``epochs`` epochs' checkpointing (the trainer's and the trial's)."""
    from handreid.config import apply_overrides
    from handreid.train.checkpoint import Progress
    from search.trainable import drop_states, hand_over

    shutil.rmtree(out / "states", ignore_errors=True)
    trainer.cfg = apply_overrides(
        trainer.cfg, {"train.checkpoint_every": every, "train.epochs": epochs}
    )
    trainer.progress, trainer.pending_best = Progress(), None
    p, saved, bests, keep = trainer.progress, [], [], 2  # Tune keeps 2 (the real spaces)
    start = wchar()
    for epoch in range(1, epochs + 1):
        p.epoch, p.status = epoch, "done" if epoch == epochs else "running"
        improved = curve(epoch, p.status)
        if improved:
            p.best_epoch = epoch
        path = trainer.save_epoch(improved)
        if path is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            hand_over(out, Path(tmp), epoch, p.best_epoch, durable=True)
            shutil.copytree(tmp, storage / str(len(list(storage.iterdir()))))  # Tune's
        saved.append(epoch)
        bests.append(p.best_epoch)
        drop_states(out, set(bests[-keep:]) | set(saved[-keep:]), last=0)
    return wchar() - start


def measure(backbone: str, unfreeze: int, epochs: int, every: int) -> list[dict]:
    from handreid.config import apply_overrides
    from handreid.train.checkpoint import checkpoint_due

    with tempfile.TemporaryDirectory() as tmp:
        out, storage = Path(tmp) / "trial", Path(tmp) / "storage"
        storage.mkdir()
        trainer = trainer_at_full_size(backbone, unfreeze, out)
        ref = trainable_bytes(trainer) / 2**20
        sparse = apply_overrides(trainer.cfg, {"train.checkpoint_every": every}).train
        curves = {
            "always": lambda epoch, status: True,
            "worst": lambda epoch, status: not checkpoint_due(sparse, epoch, status),
        }
        rows = []
        for curve, improves in curves.items():
            before = one_trial(trainer, out, storage, epochs, 1, improves) / 2**20
            after = one_trial(trainer, out, storage, epochs, every, improves) / 2**20
            rows.append(
                {
                    "backbone": backbone,
                    "unfreeze_blocks": unfreeze,
                    "curve": curve,
                    "epochs": epochs,
                    "every": every,
                    "trainable_state_mib": ref,
                    "before_mib": before,
                    "after_mib": after,
                    "ratio": before / after,
                }
            )
        return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", nargs="+", default=["ViT-B-16", "RN50"])
    parser.add_argument("--unfreeze", nargs="+", type=int, default=[2, -1])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args(argv)
    rows = [
        r
        for b in args.backbones
        for n in args.unfreeze
        for r in measure(b, n, args.epochs, args.every)
    ]
    for r in rows:
        print(
            f"{r['backbone']:9} unfreeze {r['unfreeze_blocks']:>2}, {r['curve']:6}: trainable "
            f"state {r['trainable_state_mib']:7.1f} MiB; per {r['epochs']}-epoch trial: state "
            f"every epoch {r['before_mib']:9.1f} MiB, every {r['every']} epochs "
            f"{r['after_mib']:8.1f} MiB ({r['ratio']:.2f}x less)"
        )
    least = min(r["ratio"] for r in rows)
    emit("checkpoint_bytes", f"per trial: at least {least:.2f}x fewer bytes", {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
