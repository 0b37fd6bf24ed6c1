"""What confirmation over seeds buys (issue 15), on the demo task and for the shipped spaces.

1. ``run``: the demo search (``spaces/demo.yml``, its confirmation settings included) with
   ``tune.seed`` 0..N-1, each through ``handreid-search`` as ``make demo`` runs it. Per
   search seed and backbone, from its ``confirm.csv``: is the single-seed winner (the
   confirmed configuration with the best search value) the confirmed winner (best mean over
   seeds)? The regret of picking by one seed: the confirmed winner's mean minus the
   single-seed winner's mean (validation mAP points, over the same seeds). Also the
   confirmation's compute as a fraction of the search's (``trial_seconds`` in trials.csv).
2. ``cost``: the confirmation's share of the compute for each shipped space, from its
   settings: confirmation epochs (backbones x top_k x seeds x max_epochs) against the
   search's expected epochs under its ASHA (each rung keeps 1/reduction_factor;
   ``search.plan.expected_search_epochs``, which ``handreid-search --plan`` prints).

    python -m bench.confirm_regret run [--searches 10]
    python -m bench.confirm_regret cost
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench.common import emit

REPO = Path(__file__).resolve().parents[1]
SPACES = ("demo", "rn50", "vitb16", "compare")


def seeded_space(seed: int, folder: Path) -> Path:
    """spaces/demo.yml with ``tune.seed`` set, its base resolved from the repository."""
    doc = yaml.safe_load((REPO / "spaces" / "demo.yml").read_text())
    doc["base"] = str(REPO / "spaces" / doc["base"])
    doc["tune"]["seed"] = seed
    path = folder / f"demo-seed{seed}.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def one_search(seed: int, folder: Path) -> dict:
    import pandas as pd

    space = seeded_space(seed, folder)
    cmd = [sys.executable, "-m", "search.cli", "--space", str(space), "--quiet"]
    start = time.perf_counter()
    cmd += ["--storage", str(folder / "runs"), "--name", f"seed{seed}"]
    subprocess.run(cmd, check=True, cwd=folder, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    run_dir = folder / "runs" / f"seed{seed}"
    confirm = pd.read_csv(run_dir / "confirm.csv")
    trials = pd.read_csv(run_dir / "trials.csv")
    out = {"seed": seed, "wall_seconds": wall, "backbones": {}}
    for backbone, part in confirm.groupby("backbone"):
        single = part.sort_values("search_val", ascending=False).iloc[0]
        confirmed = part.sort_values("val_mean", ascending=False).iloc[0]
        out["backbones"][backbone] = {
            "configs": len(part),
            "runs": int(part["runs"].min()),
            "same": bool(single["config_id"] == confirmed["config_id"]),
            "regret": float(confirmed["val_mean"] - single["val_mean"]),
            "single_search_val": float(single["search_val"]),
            "single_mean": float(single["val_mean"]),
            "confirmed_mean": float(confirmed["val_mean"]),
        }
    search = trials[trials["role"] == "search"]
    out["complete"] = {
        b: int((part["status"] == "complete").sum()) for b, part in search.groupby("backbone")
    }
    column = "trial_seconds" if "trial_seconds" in trials else "train_seconds"  # older files
    seconds = trials.groupby("role")[column].sum()
    out["compute_fraction"] = float(seconds.get("confirm", 0.0) / seconds["search"])
    return out


def run(searches: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(searches):
            rows.append(one_search(seed, Path(tmp)))
            print(f"search seed {seed}: {rows[-1]['backbones']}", file=sys.stderr, flush=True)
    parts = []
    for backbone in sorted({b for r in rows for b in r["backbones"]}):
        cells = [r["backbones"][backbone] for r in rows if backbone in r["backbones"]]
        differ = sum(not c["same"] for c in cells)
        regret = np.array([c["regret"] for c in cells])
        optimism = np.array([c["single_search_val"] - c["single_mean"] for c in cells])
        parts.append(
            f"{backbone}: single-seed winner is not the confirmed one in {differ} of "
            f"{len(cells)} searches; regret {regret.mean():.2f} mean, {regret.max():.2f} max "
            f"(val mAP points); the single-seed winner's search value exceeds its own "
            f"multi-seed mean by {optimism.mean():.2f} on average"
        )
    for backbone in sorted({b for r in rows for b in r["complete"]}):
        done = [r["complete"].get(backbone, 0) for r in rows]
        parts.append(f"{backbone} complete trials per search {min(done)}-{max(done)}: {done}")
    fraction = np.array([r["compute_fraction"] for r in rows])
    parts.append(
        f"confirmation compute / search compute {fraction.mean():.2f} "
        f"({fraction.min():.2f}-{fraction.max():.2f})"
    )
    emit("confirm_regret", "; ".join(parts), {"searches": rows})


def cost() -> None:
    from search.assets import backbones as backbone_choices
    from search.plan import expected_search_epochs
    from search.space import load_space

    parts, data = [], {}
    for name in SPACES:
        space = load_space(REPO / "spaces" / f"{name}.yml")
        c = space.tune.confirm
        backbones = len(backbone_choices(space))
        confirm = backbones * c.top_k * c.seeds * space.max_epochs
        score = backbones * c.score_seeds * space.max_epochs  # fresh seeds of each winner
        search = expected_search_epochs(space)
        data[name] = {"confirm_epochs": confirm, "score_epochs": score, "search_epochs": search}
        parts.append(
            f"{name}: {backbones} backbone(s) x top {c.top_k} x {c.seeds} seeds x "
            f"{space.max_epochs} epochs = {confirm} epochs against {search:.0f} expected for "
            f"the search ({space.tune.num_samples} trials): {confirm / search:.2f}; scoring "
            f"{backbones} x {c.score_seeds} fresh seeds = {score} epochs: {score / search:.2f}"
        )
    emit("confirm_cost", "; ".join(parts), data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run").add_argument("--searches", type=int, default=10)
    sub.add_parser("cost")
    args = parser.parse_args(argv)
    os.environ.setdefault("HANDREID_RAY_LOG_LEVEL", "WARNING")
    if args.cmd == "run":
        run(args.searches)
    else:
        cost()


if __name__ == "__main__":
    main()
