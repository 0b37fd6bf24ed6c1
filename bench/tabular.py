"""Search efficiency on a tabular benchmark built from the demo task.

    python -m bench.tabular build     # train 60 seeded demo configurations to full budget
    python -m bench.tabular replay    # replay 4 strategies x 20 seeds through Ray Tune + Optuna

`build` stores every learning curve (validation mAP and seconds per epoch) in
bench/tabular_demo.json. `replay` runs the real engine -- Tuner, HandReIDOptunaSearch
(TPE or random sampler), ASHA or no scheduler -- with a trainable that looks the proposed
configuration up in the table (its nearest sampled configuration) and reports the stored
curve epoch by epoch, so time is simulated. Trials run one at a time, so compute is counted
in order. For each strategy: compute (epochs and simulated seconds) until some trial comes
within 0.5 mAP points of the table's best, and the best reached at a fixed budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import emit

REPO = Path(__file__).resolve().parents[1]
TABLE = Path(__file__).parent / "tabular_demo.json"
SPACE = REPO / "spaces" / "demo.yml"
TOLERANCE = 0.5


# ------------------------------------------------------------------ build


def _train_one(job: tuple[int, dict, str]) -> dict:
    import torch

    torch.set_num_threads(1)
    index, params, tmp = job
    os.environ["HANDREID_CACHE"] = tmp
    from handreid.train.trainer import train
    from search.space import load_space

    space = load_space(SPACE)
    cfg = space.trial_config(params, {"train.stage1_cache": f"{tmp}/stage1", "train.cpu": True})
    curve = []
    train(
        cfg,
        f"{tmp}/run{index}",
        evaluate_on_test=False,
        report=lambda m, _: curve.append((m["val_mAP"], m["epoch_seconds"])),
    )
    return {
        "index": index,
        "params": params,
        "val_mAP": [c[0] for c in curve],
        "epoch_seconds": [c[1] for c in curve],
    }


def build(n_configs: int, workers: int) -> None:
    import multiprocessing as mp

    import optuna

    from handreid.data.build import synthetic_root
    from search.space import load_space

    space = load_space(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=12345))
    configs = []
    for _ in range(n_configs):
        trial = study.ask()
        space.define_by_run(trial)
        configs.append(dict(trial.params))
        study.tell(trial, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HANDREID_CACHE"] = tmp
        synthetic_root(space.base.data.synth)
        for i, backbone in enumerate(sorted({c["model.backbone"] for c in configs})):
            # warm the stage-1 cache of each backbone, so the workers do not race for it
            first = next(c for c in configs if c["model.backbone"] == backbone)
            _train_one((-1 - i, first, tmp))
        with mp.get_context("spawn").Pool(workers) as pool:
            rows = pool.map(_train_one, [(i, c, tmp) for i, c in enumerate(configs)])
    TABLE.write_text(
        json.dumps(
            {"space": "spaces/demo.yml", "max_epochs": space.max_epochs, "configs": rows}, indent=1
        )
    )
    best = max(max(r["val_mAP"]) for r in rows)
    print(f"wrote {TABLE} with {len(rows)} curves; best val mAP {best:.2f}")


# ------------------------------------------------------------------ lookup


class Table:
    def __init__(self, path: Path = TABLE):
        doc = json.loads(path.read_text())
        self.rows = doc["configs"]
        self.max_epochs = doc["max_epochs"]
        self.best = max(max(r["val_mAP"]) for r in self.rows)

    def nearest(self, params: dict, distributions: dict) -> dict:
        return min(self.rows, key=lambda r: _distance(params, r["params"], distributions))


def _distance(a: dict, b: dict, distributions: dict) -> float:
    total = 0.0
    for name in set(a) | set(b):
        if name not in a or name not in b:
            total += 1.0
            continue
        d = distributions[name]
        if d.type in ("float", "int"):
            lo, hi, x, y = d.low, d.high, a[name], b[name]
            if d.log:
                lo, hi, x, y = map(math.log, (lo, hi, x, y))
            total += ((x - y) / (hi - lo)) ** 2
        else:
            total += float(a[name] != b[name])
    return total


def replay_trainable(config: dict, table: Table, distributions: dict) -> None:
    from ray import tune

    row = table.nearest(config, distributions)
    start = time.time_ns()  # orders trials exactly (timestamps in results are whole seconds)
    best = -math.inf
    for epoch, (value, seconds) in enumerate(zip(row["val_mAP"], row["epoch_seconds"]), 1):
        best = max(best, value)
        tune.report(
            {
                "epoch": epoch,
                "val_mAP": value,
                "objective": best,
                "sim_seconds": seconds,
                "table_index": row["index"],
                "start_ns": start,  # exact trial order (result timestamps are whole seconds)
                "status": "done" if epoch == len(row["val_mAP"]) else "running",
            }
        )


# ------------------------------------------------------------------ replay


STRATEGIES = {
    "random": ("random", False),
    "random+ASHA": ("random", True),
    "TPE": ("tpe", False),
    "TPE+ASHA (ours)": ("tpe", True),
}


def run_strategy(name: str, seed: int, num_samples: int, table: Table, tmp: str) -> list[dict]:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from search.optuna_search import HandReIDOptunaSearch
    from search.space import load_space

    space = load_space(SPACE)
    sampler_kind, asha = STRATEGIES[name]
    sampler = (
        optuna.samplers.RandomSampler(seed=seed)
        if sampler_kind == "random"
        else optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=space.tune.n_startup_trials
        )
    )
    searcher = HandReIDOptunaSearch(
        space=space.define_by_run, metric="objective", mode="max", sampler=sampler
    )
    t = space.tune
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",
            max_t=table.max_epochs,
            grace_period=t.grace_period,
            reduction_factor=t.reduction_factor,
        )
        if asha
        else FIFOScheduler()
    )
    distributions = {b.name: b for p in space.params for b in p.branches}
    trainable = tune.with_parameters(replay_trainable, table=table, distributions=distributions)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            metric="objective",
            mode="max",
            scheduler=scheduler,
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=1),
            num_samples=num_samples,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(storage_path=tmp, name=f"{name.split()[0]}-{seed}", verbose=0),
    )
    grid = tuner.fit()
    trials = []
    for result in grid:
        df = result.metrics_dataframe
        trials.append(
            {
                "start": int(df["start_ns"].iloc[0]) if len(df) else 0,
                "values": df["val_mAP"].tolist(),
                "seconds": df["sim_seconds"].tolist(),
            }
        )
    return sorted(trials, key=lambda r: r["start"])


def score(trials: list[dict], best: float, budget_epochs: int) -> dict:
    """Epochs and simulated seconds until within TOLERANCE of best; best within budget."""
    epochs = seconds = 0.0
    reached_epochs = reached_seconds = math.inf
    best_at_budget = -math.inf
    for trial in trials:
        for value, sec in zip(trial["values"], trial["seconds"]):
            epochs += 1
            seconds += sec
            if epochs <= budget_epochs:
                best_at_budget = max(best_at_budget, value)
            if value >= best - TOLERANCE and math.isinf(reached_epochs):
                reached_epochs, reached_seconds = epochs, seconds
    return {
        "epochs_to_target": reached_epochs,
        "seconds_to_target": reached_seconds,
        "best_at_budget": best_at_budget,
        "total_epochs": epochs,
    }


def replay(seeds: int, num_samples: int, budget_epochs: int) -> None:
    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    table = Table()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    per_strategy = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in STRATEGIES:
            runs = [
                score(run_strategy(name, seed, num_samples, table, tmp), table.best, budget_epochs)
                for seed in range(seeds)
            ]
            per_strategy[name] = summarize(runs)
            print(name, json.dumps(per_strategy[name]))
    ray.shutdown()
    base = per_strategy["random"]["median_epochs_to_target"]
    ours = per_strategy["TPE+ASHA (ours)"]["median_epochs_to_target"]
    line = "; ".join(
        f"{n}: median {s['median_epochs_to_target']:.0f} epochs "
        f"({s['reached']}/{seeds} reached), best@{budget_epochs} "
        f"{s['median_best_at_budget']:.2f}"
        for n, s in per_strategy.items()
    )
    line += f"; random/ours = {base / ours:.1f}x"
    emit(
        "tabular",
        line,
        {
            "seeds": seeds,
            "num_samples": num_samples,
            "budget_epochs": budget_epochs,
            "table_best": table.best,
            "tolerance": TOLERANCE,
            "configs": len(table.rows),
            "strategies": per_strategy,
        },
    )


def summarize(runs: list[dict]) -> dict:
    def q(values, p):
        finite = sorted(values)
        return float(np.percentile(finite, p)) if finite else math.inf

    epochs = [r["epochs_to_target"] for r in runs]
    seconds = [r["seconds_to_target"] for r in runs]
    return {
        "reached": sum(math.isfinite(e) for e in epochs),
        "median_epochs_to_target": statistics.median(epochs),
        "q25_epochs": q(epochs, 25),
        "q75_epochs": q(epochs, 75),
        "median_seconds_to_target": statistics.median(seconds),
        "q25_seconds": q(seconds, 25),
        "q75_seconds": q(seconds, 75),
        "median_best_at_budget": statistics.median(r["best_at_budget"] for r in runs),
        "min_best_at_budget": min(r["best_at_budget"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--configs", type=int, default=60)
    b.add_argument("--workers", type=int, default=2)
    r = sub.add_parser("replay")
    r.add_argument("--seeds", type=int, default=20)
    r.add_argument("--num-samples", type=int, default=30)
    r.add_argument("--budget-epochs", type=int, default=150)
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.configs, args.workers)
    else:
        replay(args.seeds, args.num_samples, args.budget_epochs)


if __name__ == "__main__":
    main()
