"""Peak disk use of a real search against the bound RELIABILITY.md states.

    python -m bench.disk_peak [--space spaces/demo.yml] [--num-samples 12]

Runs ``handreid-search`` on the space (storage in a temporary folder) and samples the run
directory every 0.1 s, counting each file once however many hard links name it. The bound:
(trials in flight x (checkpoints_to_keep + 1) + top_k per backbone) x one checkpoint, plus
the results (everything that is not trial state: Tune's files, the study, the stage-1 cache,
summaries). "One checkpoint" is the largest ``checkpoint.pt`` seen.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import emit


def usage(root: Path) -> tuple[int, int, int]:
    """(bytes of the whole folder, bytes of trial state under scratch/, largest checkpoint)."""
    seen: set[tuple[int, int]] = set()
    total = scratch = largest = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                st = os.stat(os.path.join(folder, name))
            except FileNotFoundError:  # deleted while walking
                continue
            if name == "checkpoint.pt":
                largest = max(largest, st.st_size)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
            if "/scratch/" in folder + "/":
                scratch += st.st_size
    return total, scratch, largest


def backbone_choices(space) -> set:
    for param in space.params:
        if param.key == "model.backbone":
            return {c for b in param.branches for c in b.choices}
    return {space.trial_config({}).model.backbone}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="spaces/demo.yml")
    p.add_argument("--num-samples", type=int, default=12)
    args = p.parse_args()

    from search.space import load_space

    space = load_space(args.space)
    t = space.tune
    with tempfile.TemporaryDirectory(prefix="disk-peak-") as tmp:
        run_dir = Path(tmp) / "d"
        cmd = [
            *(sys.executable, "-m", "search.cli", "--space", args.space),
            *("--storage", tmp, "--name", "d", "--quiet", "--num-samples", str(args.num_samples)),
            *("--confirm-seeds", "0"),  # the search's trial state, as the bound counts
        ]
        peak = {"total": 0, "scratch": 0, "checkpoint": 0}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                if run_dir.is_dir():
                    total, scratch, largest = usage(run_dir)
                    peak["total"] = max(peak["total"], total)
                    peak["scratch"] = max(peak["scratch"], scratch)
                    peak["checkpoint"] = max(peak["checkpoint"], largest)
                time.sleep(0.1)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        start = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        done.set()
        watcher.join()
        if proc.returncode != 0:
            sys.exit(f"the search failed ({proc.returncode}): {proc.stderr[-2000:]}")
        final_total, final_scratch, _ = usage(run_dir)

    backbones = len(backbone_choices(space))
    ckpt = peak["checkpoint"]
    slots = t.max_concurrent * (t.checkpoints_to_keep + 1) + t.top_k * backbones
    results = peak["total"] - peak["scratch"]
    bound = slots * ckpt + results
    line = (
        f"peak trial state {peak['scratch'] / 2**20:.1f} MiB vs bound {slots} x "
        f"{ckpt / 2**20:.1f} MiB = {slots * ckpt / 2**20:.1f} MiB; whole run peak "
        f"{peak['total'] / 2**20:.1f} MiB, after the wrap-up {final_total / 2**20:.1f} MiB "
        f"(trial state {final_scratch / 2**20:.1f} MiB)"
    )
    emit(
        "disk_peak",
        line,
        {
            "space": args.space,
            "num_samples": args.num_samples,
            "seconds": time.time() - start,
            "peak_bytes": peak,
            "bound_bytes": bound,
            "bound_checkpoints": slots,
            "final_total_bytes": final_total,
            "final_scratch_bytes": final_scratch,
            "within_bound": peak["scratch"] <= slots * ckpt,
        },
    )


if __name__ == "__main__":
    main()
