"""Full-size CPU step time before and after the loop changes (ratio, one run).

The stage-2 loop changed after commit 480e321: non-blocking copies, no
``accelerate.accumulate`` wrapper, validation and gallery loaders built once, evaluation
under autocast (and whatever else the working tree holds now). This runs the trainer of
both trees side by side at full size on the CPU -- ViT-B-16 at 224 px, bf16 autocast,
random init, the whole image tower trained, batch 8 (P=2 x K=4) -- each in its own
process with that tree on ``PYTHONPATH``, and alternates them round by round: one
stage-2 epoch (``Trainer.train_epoch``, 3 steps) then ``Trainer.validate()``. The first
round of each side is a warm-up and is not counted. Stage 1 is skipped (the prompts keep
their random init): it does not change the step.

    python -m bench.step_time [--rounds 3] [--before-rev 480e321] [--workers 2]

Both trainers use ``data.num_workers`` 2 (``--workers``). The old loop starts new loader
workers every epoch and every validation, and on the CPU each start forks a process
whose parameters and optimiser state the parent then rewrites (copy-on-write): a fixed
cost per epoch, which the 3-step epochs here weigh far more than a real epoch would.
``--workers 0`` leaves that out and shows the loop alone.

The old tree is checked out once with ``git worktree add --detach /tmp/handreid-before
480e321`` when it is not there yet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
MARK = "STEP_TIME "  # prefix of the protocol lines a child writes on stdout
SYNTH = {"ids": 12, "per_id": 5, "width": 256, "height": 192}  # 6 train ids: 3 steps/epoch
BATCH, K, WORKERS = 8, 4, 2


def overrides(epochs: int, workers: int = WORKERS) -> dict:
    """The run both trees train: keys that exist in the old config as well."""
    return {
        "data.root": None,
        **{f"data.synth.{k}": v for k, v in SYNTH.items()},
        "data.num_workers": workers,
        "model.backbone": "ViT-B-16",
        "model.pretrained": "none",
        "model.unfreeze_blocks": -1,
        "train.cpu": True,
        "train.mixed_precision": "bf16",
        "train.batch_size": BATCH,
        "train.num_instances": K,
        "train.epochs": epochs,
        "train.stage1_epochs": 0,
    }


# ---------------------------------------------------------------------------- child


def child(tree: Path, epochs: int, workers: int) -> None:
    """Set up one trainer from ``tree``, then answer ``round N`` / ``quit`` on stdin."""
    import handreid
    from handreid.config import load_config
    from handreid.train.trainer import Trainer

    where = Path(handreid.__file__).resolve()
    if tree not in where.parents:
        raise SystemExit(f"handreid imported from {where}, not from {tree}")

    def say(doc: dict) -> None:
        print(MARK + json.dumps(doc), flush=True)

    start = time.perf_counter()
    cfg = load_config(None, overrides(epochs, workers))
    trainer = Trainer(cfg, Path(os.environ["HANDREID_CACHE"]) / "run")
    trainer.setup()
    trainer.setup_stage2()
    trainer.compute_text_features()
    steps = len(trainer.data.train_loader)
    say({"ready": True, "setup_seconds": time.perf_counter() - start, "steps": steps})
    for line in sys.stdin:
        command, *arg = line.split()
        if command == "quit":
            return
        stats = trainer.train_epoch(int(arg[0]))
        start = time.perf_counter()
        val = trainer.validate()
        say(
            {
                "step_seconds": stats["epoch_seconds"] / steps,
                "epoch_seconds": stats["epoch_seconds"],
                "images_per_second": stats["images_per_second"],
                "validate_seconds": time.perf_counter() - start,
                "loss": stats["loss"],
                "val_mAP": val["val_mAP"],
            }
        )


# ---------------------------------------------------------------------------- parent


class Side:
    """One tree's trainer in a child process (cwd and PYTHONPATH at that tree)."""

    def __init__(self, name: str, tree: Path, cache: Path, epochs: int, workers: int):
        self.name, self.tree = name, tree
        env = {
            **os.environ,
            "PYTHONPATH": str(tree),
            "HANDREID_CACHE": str(cache),
            "TQDM_DISABLE": "1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "--child", str(tree), "--epochs", str(epochs)]
            + ["--workers", str(workers)],
            cwd=tree,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        raise RuntimeError(f"{self.name} trainer exited with code {self.proc.wait()}")

    def round(self, epoch: int) -> dict:
        self.proc.stdin.write(f"round {epoch}\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait()


def before_tree(path: Path, rev: str) -> Path:
    """The old code in a detached git worktree (created when missing)."""
    if not (path / "handreid").is_dir():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), rev],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, check=True, capture_output=True, text=True
    ).stdout.strip()
    if not head.startswith(rev):
        raise SystemExit(f"{path} is at {head[:12]}, not {rev}; remove it or pass --before-tree")
    return path.resolve()


def run(rounds: int, old: Path, workers: int) -> dict:
    epochs = rounds + 1  # the warm-up round is an epoch too (the scheduler counts them)
    per_side: dict[str, list[dict]] = {"before": [], "after": []}
    start, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        sides = {}
        for name, tree in (("before", old), ("after", ROOT)):  # set up one at a time
            sides[name] = Side(name, tree, Path(tmp) / name, epochs, workers)
            ready = sides[name].read()
            print(f"{name}: set up in {ready['setup_seconds']:.1f}s, {ready['steps']} steps/epoch")
        try:
            for epoch in range(1, epochs + 1):
                order = ("before", "after") if epoch % 2 else ("after", "before")
                for name in order:
                    r = sides[name].round(epoch)
                    tag = "warm-up" if epoch == 1 else f"round {epoch - 1}"
                    print(
                        f"{tag:8} {name:6}: {r['step_seconds']:.2f} s/step, "
                        f"validation {r['validate_seconds']:.2f} s"
                    )
                    if epoch > 1:
                        per_side[name].append(r)
        finally:
            for side in sides.values():
                side.close()
    medians = {
        name: {
            key: statistics.median(r[key] for r in rows)
            for key in ("step_seconds", "validate_seconds")
        }
        for name, rows in per_side.items()
    }
    return {
        "medians": medians,
        "step_ratio_before_over_after": medians["before"]["step_seconds"]
        / medians["after"]["step_seconds"],
        "validate_ratio_before_over_after": medians["before"]["validate_seconds"]
        / medians["after"]["validate_seconds"],
        "rounds": per_side,
        "total_seconds": time.perf_counter() - start,
        "load_average_1_5_15_min": {"start": load_before, "end": os.getloadavg()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="counted rounds (after 1 warm-up)")
    parser.add_argument("--before-rev", default="480e321")
    parser.add_argument("--before-tree", type=Path, default=Path("/tmp/handreid-before"))
    parser.add_argument(
        "--workers", type=int, default=WORKERS, help="data.num_workers of both trainers"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child.resolve(), args.epochs, args.workers)
        return
    from bench.common import emit

    old = before_tree(args.before_tree, args.before_rev)
    result = run(args.rounds, old, args.workers)
    m = result["medians"]
    line = (
        f"ViT-B-16 224px bf16 on CPU, batch {BATCH}, {args.workers} loader workers: "
        f"{m['before']['step_seconds']:.2f} s/step before ({args.before_rev}), "
        f"{m['after']['step_seconds']:.2f} after, ratio "
        f"{result['step_ratio_before_over_after']:.3f}; validation "
        f"{m['before']['validate_seconds']:.2f} s before, {m['after']['validate_seconds']:.2f} "
        f"after, ratio {result['validate_ratio_before_over_after']:.3f} "
        f"(median of {args.rounds} alternating rounds, before/after > 1 = after faster)"
    )
    emit(
        "step_time" if args.workers == WORKERS else f"step_time_workers{args.workers}",
        line,
        {
            "before_rev": args.before_rev,
            "after": "working tree",
            "config": overrides(args.rounds + 1, args.workers),
            "steps_per_round": "one stage-2 epoch",
            **result,
        },
    )


if __name__ == "__main__":
    main()
