"""Search efficiency on a tabular benchmark built from the demo task.

    python -m bench.tabular build     # train 60 seeded demo configurations to full budget
    python -m bench.tabular replay    # replay 4 strategies x 20 seeds through Ray Tune + Optuna
    python -m bench.tabular describe  # how well early epochs predict the final value

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
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import emit

REPO = Path(__file__).resolve().parents[1]
TABLE = Path(__file__).parent / "tabular_demo.json"
SPACE = REPO / "spaces" / "demo.yml"
TOLERANCE = 0.5
WIDE = 2.0  # a looser target (the table's top few configurations), less sensitive to noise


# ------------------------------------------------------------------ build


def _train_one(job: tuple[int, dict, str]) -> dict:
    import torch

    torch.set_num_threads(1)
    index, params, tmp, extra = job  # extra: config overrides, e.g. another seed
    os.environ["HANDREID_CACHE"] = tmp
    from handreid.train.trainer import train
    from search.space import load_space

    space = load_space(SPACE)
    cfg = space.trial_config(
        params, {"train.stage1_cache": f"{tmp}/stage1", "train.cpu": True, **extra}
    )
    curve = []
    train(
        cfg,
        f"{tmp}/run{index}" + "".join(f"-{v}" for v in extra.values()),
        evaluate_on_test=False,
        report=lambda m, _: curve.append((m["val_mAP"], m["epoch_seconds"])),
    )
    return {
        "index": index,
        "params": params,
        "val_mAP": [c[0] for c in curve],
        "epoch_seconds": [c[1] for c in curve],
    }


def train_all(jobs: list[tuple[int, dict, dict]], workers: int) -> list[dict]:
    """Train (index, params, overrides) jobs in a process pool, on the space's synthetic data
    and a fresh stage-1 cache; returns one curve row per job, in order."""
    import multiprocessing as mp

    from handreid.data.build import synthetic_root
    from search.space import load_space

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HANDREID_CACHE"] = tmp
        synthetic_root(load_space(SPACE).base.data.synth)
        for i, backbone in enumerate(sorted({params["model.backbone"] for _, params, _ in jobs})):
            # warm the stage-1 cache of each backbone, so the workers do not race for it
            first = next(p for _, p, _ in jobs if p["model.backbone"] == backbone)
            _train_one((-1 - i, first, tmp, {}))
        with mp.get_context("spawn").Pool(workers) as pool:
            return pool.map(_train_one, [(i, p, tmp, extra) for i, p, extra in jobs])


def sample_configs(n: int, seed: int = 12345) -> list[dict]:
    """``n`` configurations of the demo space from Optuna's seeded random sampler; with
    ``tune.balance`` (the demo: model.backbone) an equal share for each of its choices, as
    the search draws them (the first ones drawn of each)."""
    import optuna

    from search.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(SPACE)
    balanced = space.balanced()
    quota: dict = {}
    if balanced:
        name, choices = balanced
        quota = {c: n // len(choices) + (i < n % len(choices)) for i, c in enumerate(choices)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs: list[dict] = []
    while len(configs) < n:
        trial = study.ask()
        space.define_by_run(trial)
        study.tell(trial, 0.0)
        if balanced:
            value = trial.params[name]
            if quota[value] == 0:
                continue
            quota[value] -= 1
        configs.append(dict(trial.params))
    return configs


def build(n_configs: int, workers: int, path: Path = TABLE, sample_seed: int = 12345) -> None:
    from search.space import load_space

    space = load_space(SPACE)
    configs = sample_configs(n_configs, sample_seed)
    rows = train_all([(i, c, {}) for i, c in enumerate(configs)], workers)
    doc = {
        "space": "spaces/demo.yml",
        "sample_seed": sample_seed,
        "max_epochs": space.max_epochs,
        "configs": rows,
    }
    Path(path).write_text(json.dumps(doc, indent=1))
    best = max(max(r["val_mAP"]) for r in rows)
    print(f"wrote {path} with {len(rows)} curves; best val mAP {best:.2f}")


def describe(path: Path = TABLE, rungs: tuple[int, ...] = (3, 5, 9)) -> None:
    """How well the best value up to an early epoch predicts the final best, per backbone
    (Spearman rank correlation), and where each backbone's best row ranks at each rung."""
    from scipy.stats import spearmanr

    table = Table(path)
    out, parts = {}, []
    for backbone in sorted({r["params"]["model.backbone"] for r in table.rows}):
        rows = [r for r in table.rows if r["params"]["model.backbone"] == backbone]
        final = np.array([max(r["val_mAP"]) for r in rows])
        top = int(np.argmax(final))
        stats = {"rows": len(rows), "best": float(final[top])}
        for rung in rungs:
            early = np.array([max(r["val_mAP"][:rung]) for r in rows])
            stats[f"spearman_epoch{rung}"] = float(spearmanr(early, final).statistic)
            stats[f"best_row_rank_epoch{rung}"] = int((early > early[top]).sum()) + 1
        out[backbone] = stats
        parts.append(
            f"{backbone} ({len(rows)} rows, best {stats['best']:.2f}): Spearman "
            + ", ".join(f"e{r} {stats[f'spearman_epoch{r}']:.2f}" for r in rungs)
            + "; best row ranks "
            + ", ".join(f"e{r} {stats[f'best_row_rank_epoch{r}']}" for r in rungs)
        )
    name = "tabular_describe" + ("" if Path(path) == TABLE else f"_{Path(path).stem}")
    emit(name, "; ".join(parts), {"table": str(path), "backbones": out})


# ------------------------------------------------------------------ lookup


class Table:
    def __init__(self, path: Path = TABLE):
        doc = json.loads(Path(path).read_text())
        self.rows = doc["configs"]
        self.max_epochs = doc["max_epochs"]
        self.best = max(max(r["val_mAP"]) for r in self.rows)

    def nearest(self, params: dict, distributions: dict, exclude: set[int] = frozenset()) -> dict:
        """The nearest sampled configuration not evaluated yet in this search (a new trial is a
        new configuration; the 60-row table cannot offer more than 60 distinct ones)."""
        rows = [r for r in self.rows if r["index"] not in exclude] or self.rows
        return min(rows, key=lambda r: _distance(params, r["params"], distributions))


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


def replay_trainable(config: dict, table: Table, distributions: dict, used: str) -> None:
    from ray import tune

    used_path = Path(used)  # rows this search has evaluated (trials run one at a time)
    seen = set(json.loads(used_path.read_text())) if used_path.exists() else set()
    row = table.nearest(config, distributions, exclude=seen)
    used_path.write_text(json.dumps(sorted(seen | {row["index"]})))
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


def run_strategy(
    name: str,
    seed: int,
    num_samples: int,
    table: Table,
    tmp: str,
    asha_settings: tuple[int, int] | None = None,
) -> list[dict]:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from search.driver import make_sampler
    from search.optuna_search import HandReIDOptunaSearch
    from search.space import load_space

    space = load_space(SPACE)
    sampler_kind, asha = STRATEGIES[name]
    sampler = (
        optuna.samplers.RandomSampler(seed=seed)
        if sampler_kind == "random"
        else make_sampler(seed, space.tune.n_startup_trials)  # the search's own sampler
    )
    searcher = HandReIDOptunaSearch(
        space=space.define_by_run, metric="objective", mode="max", sampler=sampler
    )
    t = space.tune
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",
            max_t=table.max_epochs,
            grace_period=(asha_settings or (t.grace_period, t.reduction_factor))[0],
            reduction_factor=(asha_settings or (t.grace_period, t.reduction_factor))[1],
        )
        if asha
        else FIFOScheduler()
    )
    distributions = {b.name: b for p in space.params for b in p.branches}
    used = str(Path(tmp) / f"used-{name.split()[0]}-{seed}.json")
    trainable = tune.with_parameters(
        replay_trainable, table=table, distributions=distributions, used=used
    )
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
    """Compute (epochs, simulated seconds) until a trial comes within TOLERANCE of the table's
    best, and within WIDE of it; and the best value seen within the epoch budget."""
    epochs = seconds = 0.0
    reached = {TOLERANCE: (math.inf, math.inf), WIDE: (math.inf, math.inf)}
    best_at_budget = -math.inf
    for trial in trials:
        for value, sec in zip(trial["values"], trial["seconds"]):
            epochs += 1
            seconds += sec
            if epochs <= budget_epochs:
                best_at_budget = max(best_at_budget, value)
            for gap, (e, _) in list(reached.items()):
                if value >= best - gap and math.isinf(e):
                    reached[gap] = (epochs, seconds)
    return {
        "epochs_to_target": reached[TOLERANCE][0],
        "seconds_to_target": reached[TOLERANCE][1],
        "epochs_to_wide": reached[WIDE][0],
        "seconds_to_wide": reached[WIDE][1],
        "best_at_budget": best_at_budget,
        "total_epochs": epochs,
    }


def replay(
    seeds: int,
    num_samples: int,
    budget_epochs: int,
    strategies=tuple(STRATEGIES),
    asha_settings: tuple[int, int] | None = None,
    result_name: str = "tabular",
    table_path: Path = TABLE,
) -> None:
    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    table = Table(table_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    per_strategy = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in strategies:
            runs = [
                score(
                    run_strategy(name, seed, num_samples, table, tmp, asha_settings),
                    table.best,
                    budget_epochs,
                )
                for seed in range(seeds)
            ]
            per_strategy[name] = summarize(runs)
            short = {k: v for k, v in per_strategy[name].items() if k != "runs"}
            print(name, json.dumps(short))
    ray.shutdown()
    base = per_strategy.get("random", {}).get("median_epochs_to_target", math.nan)
    ours = per_strategy.get("TPE+ASHA (ours)", {}).get("median_epochs_to_target", math.nan)
    line = "; ".join(
        f"{n}: median {s['median_epochs_to_target']:.0f} epochs to best-{TOLERANCE} "
        f"({s['reached']}/{seeds} reached), {s['median_epochs_to_wide']:.0f} to best-{WIDE}, "
        f"best@{budget_epochs} {s['median_best_at_budget']:.2f}"
        for n, s in per_strategy.items()
    )
    exact = random_order_baseline(table, budget_epochs)
    line += (
        f"; random/ours = {base / ours:.2f}x; the table in random order (no engine): median "
        f"{exact['median_epochs_to_target']:.0f} epochs to best-{TOLERANCE}, "
        f"{exact['median_epochs_to_wide']:.0f} to best-{WIDE}, "
        f"ratio to ours {exact['median_epochs_to_target'] / ours:.2f}x"
    )
    emit(
        result_name,
        line,
        {
            "seeds": seeds,
            "num_samples": num_samples,
            "budget_epochs": budget_epochs,
            "table_best": table.best,
            "tolerance": TOLERANCE,
            "configs": len(table.rows),
            "table": str(table_path),
            "asha": asha_settings,
            "strategies": per_strategy,
            "random_order_baseline": exact,
        },
    )


def random_order_baseline(table: Table, budget_epochs: int, draws: int = 10_000) -> dict:
    """Random search without pruning, computed exactly from the table: every configuration
    trained in a uniformly random order. The engine's random sampler proposes points in the
    space and gets the nearest unevaluated row, so a row with a small neighbourhood is found
    later than 1/60 odds would say; this is the check on that replay artefact."""
    rng = np.random.default_rng(0)
    trials = [{"values": r["val_mAP"], "seconds": r["epoch_seconds"]} for r in table.rows]
    runs = [
        score([trials[i] for i in rng.permutation(len(trials))], table.best, budget_epochs)
        for _ in range(draws)
    ]
    out = summarize(runs)
    del out["runs"]
    return out


def summarize(runs: list[dict]) -> dict:
    """Median and quartiles; a run that never reached the target counts as infinite compute."""

    def q(key, p):
        return float(np.percentile([r[key] for r in runs], p, method="nearest"))

    out = {
        "reached": sum(math.isfinite(r["epochs_to_target"]) for r in runs),
        "reached_wide": sum(math.isfinite(r["epochs_to_wide"]) for r in runs),
    }
    for key in ("epochs_to_target", "seconds_to_target", "epochs_to_wide", "seconds_to_wide"):
        out[f"median_{key}"] = q(key, 50)
        out[f"q25_{key}"], out[f"q75_{key}"] = q(key, 25), q(key, 75)
    out["median_best_at_budget"] = q("best_at_budget", 50)
    out["min_best_at_budget"] = min(r["best_at_budget"] for r in runs)
    out["runs"] = runs
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--configs", type=int, default=60)
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--sample-seed", type=int, default=12345, help="seed of the sampled configs")
    b.add_argument("--table", type=Path, default=TABLE, help="where to write the table")
    d = sub.add_parser("describe")
    d.add_argument("--table", type=Path, default=TABLE)
    r = sub.add_parser("replay")
    r.add_argument("--seeds", type=int, default=20)
    r.add_argument("--num-samples", type=int, default=60)
    r.add_argument("--budget-epochs", type=int, default=150)
    r.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    r.add_argument(
        "--asha",
        nargs=2,
        type=int,
        metavar=("GRACE", "REDUCTION"),
        help="ASHA settings instead of the demo space's",
    )
    r.add_argument("--name", default="tabular", help="result name (bench/results/NAME.json)")
    r.add_argument("--table", type=Path, default=TABLE, help="the table to replay")
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.configs, args.workers, args.table, args.sample_seed)
    elif args.cmd == "describe":
        describe(args.table)
    else:
        replay(
            args.seeds,
            args.num_samples,
            args.budget_epochs,
            tuple(args.strategies),
            tuple(args.asha) if args.asha else None,
            args.name,
            args.table,
        )


if __name__ == "__main__":
    main()
