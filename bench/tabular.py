"""Search efficiency on tabular benchmarks built from the demo task (pretrained tiny CLIPs).

    python -m bench.tabular build --table bench/tabular_a.json --sample-seed 12345
    python -m bench.tabular build --table bench/tabular_b.json --sample-seed 777
    python -m bench.tabular build --table bench/tabular_c.json --sample-seed 2026
    python -m bench.tabular describe --table bench/tabular_a.json   # early vs final ranks
    python -m bench.tabular replay    # every strategy x every table x 20 searches

`build` trains 60 configurations of spaces/demo.yml (30 per backbone, sampled as the search
samples them) to the full 12 epochs and stores each learning curve (validation mAP and
seconds per epoch) and warm-up; then each backbone's 8 best rows again with train.seed 1-3.
A row's quality is its multi-seed mean; the target of a search is any row whose mean lies
within one pooled seed std of the backbone's best mean, so it does not sit inside seed
noise.

`replay` drives the search's own searcher and scheduler as ``search.strategy`` builds and
drives them with the stored curves, one trial at a time, each proposed configuration
trained as the nearest table row not yet used. For each table, backbone and strategy: over
20 searches of the demo's 24 trials, how many trained a target row to the end within the
backbone's 12, and the compute spent on its trials until then (epochs), against random
search through the same lookup. The lookup limits what the figures can show: a sampler can
only reorder 30 fixed rows per backbone, and the lookup alone moves random search by about
a third either way (issue 28). Search efficiency is measured on LCBench (bench.lcbench);
these tables are for `describe`: how early epochs rank the final values, to place a rung.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import emit
from search.objective import best_so_far

REPO = Path(__file__).resolve().parents[1]
TABLE = Path(__file__).parent / "tabular_a.json"
TABLES = [Path(__file__).parent / f"tabular_{k}.json" for k in "abc"]
SPACE = REPO / "spaces" / "demo.yml"
BUDGET = 12  # the demo search's trials per backbone (24, balanced)


# ------------------------------------------------------------------ build


def _train_one(job: tuple[int, dict, str]) -> dict:
    import torch

    torch.set_num_threads(1)
    index, params, tmp, extra = job  # extra: config overrides, e.g. another seed
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

    with tempfile.TemporaryDirectory() as tmp:  # runs and stage-1 cache; data as the demo's
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


def build(
    n_configs: int,
    workers: int,
    path: Path = TABLE,
    sample_seed: int = 12345,
    top: int = 8,
    seeds: int = 4,
) -> None:
    """Train ``n_configs`` sampled configurations (train.seed 0) to the full budget, then
    each backbone's ``top`` rows (by their seed-0 best value) again with train.seed
    1..seeds-1, so the table knows which configurations are best beyond seed noise."""
    from handreid.train.optim import warmup_epochs
    from search.space import load_space

    space = load_space(SPACE)
    configs = sample_configs(n_configs, sample_seed)
    rows = train_all([(i, c, {}) for i, c in enumerate(configs)], workers)
    for row in rows:
        cfg = space.trial_config(row["params"])
        row["warmup_epochs"] = warmup_epochs(
            cfg.optim.scheduler, cfg.optim.warmup_epochs, cfg.train.epochs
        )
    chosen = [
        r
        for backbone in sorted({r["params"]["model.backbone"] for r in rows})
        for r in sorted(
            (r for r in rows if r["params"]["model.backbone"] == backbone),
            key=lambda r: -max(r["val_mAP"]),
        )[:top]
    ]
    jobs = [(r["index"], r["params"], {"train.seed": k}) for r in chosen for k in range(1, seeds)]
    again = train_all(jobs, workers)
    for r in chosen:
        r["seed_values"] = [max(r["val_mAP"])] + [
            max(a["val_mAP"]) for a in again if a["index"] == r["index"]
        ]
    doc = {
        "space": "spaces/demo.yml",
        "sample_seed": sample_seed,
        "max_epochs": space.max_epochs,
        "top_per_backbone": top,
        "seeds": seeds,
        "configs": rows,
    }
    Path(path).write_text(json.dumps(doc, indent=1))
    best = max(max(r["val_mAP"]) for r in rows)
    print(f"wrote {path} with {len(rows)} curves; best val mAP {best:.2f}")


def extend_seeds(path: Path, workers: int, step: int = 4) -> None:
    """Give more rows their extra seeds until no row without them could be a target: every
    backbone's best seed-0 value among unseeded rows lies below the target by more than a
    pooled std (seed-0 values of top rows run above their means, so such a row's mean
    would have to beat its own seed-0 value by over a std). ``step`` rows at a time."""
    while True:
        doc = json.loads(Path(path).read_text())
        table = Table(path)
        jobs = []
        for backbone in sorted({r["params"]["model.backbone"] for r in table.rows}):
            goal = targets(table, backbone)
            floor = goal["best_mean"] - 2 * goal["pooled_std"]
            unseeded = sorted(
                (
                    r
                    for r in doc["configs"]
                    if r["params"]["model.backbone"] == backbone and "seed_values" not in r
                ),
                key=lambda r: -max(r["val_mAP"]),
            )
            for r in unseeded[:step]:
                if max(r["val_mAP"]) >= floor:
                    jobs += [
                        (r["index"], r["params"], {"train.seed": k}) for k in range(1, doc["seeds"])
                    ]
        if not jobs:
            return
        again = train_all(jobs, workers)
        for r in doc["configs"]:
            if any(j[0] == r["index"] for j in jobs):
                r["seed_values"] = [max(r["val_mAP"])] + [
                    max(a["val_mAP"]) for a in again if a["index"] == r["index"]
                ]
        Path(path).write_text(json.dumps(doc, indent=1))
        print(f"{path}: {len(jobs)} more seeded runs")


def describe(path: Path = TABLE, rungs: tuple[int, ...] = (3, 4, 6, 8)) -> None:
    """How well the best value up to an early epoch predicts the final best, per backbone
    (Spearman rank correlation), and where the best-placed target row (multi-seed) ranks
    at each candidate rung."""
    from scipy.stats import spearmanr

    table = Table(path)
    out, parts = {}, []
    for backbone in sorted({r["params"]["model.backbone"] for r in table.rows}):
        rows = [r for r in table.rows if r["params"]["model.backbone"] == backbone]
        final = np.array([max(r["val_mAP"]) for r in rows])
        goal = set(targets(table, backbone)["rows"])
        stats = {"rows": len(rows), "best": float(final.max()), "targets": len(goal)}
        for rung in rungs:
            early = np.array([max(r["val_mAP"][:rung]) for r in rows])
            stats[f"spearman_epoch{rung}"] = float(spearmanr(early, final).statistic)
            # the rank (1 = first) of the best-placed target row at this epoch
            stats[f"target_rank_epoch{rung}"] = min(
                int((early > early[k]).sum()) + 1 for k, r in enumerate(rows) if r["index"] in goal
            )
        out[backbone] = stats
        parts.append(
            f"{backbone} ({len(rows)} rows, best {stats['best']:.2f}): Spearman "
            + ", ".join(f"e{r} {stats[f'spearman_epoch{r}']:.2f}" for r in rungs)
            + f"; best-placed of the {len(goal)} target rows ranks "
            + ", ".join(f"e{r} {stats[f'target_rank_epoch{r}']}" for r in rungs)
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


# ------------------------------------------------------------------ replay


@dataclass(frozen=True)
class Strategy:
    sampler: str  # "random" or "tpe" (the search's own sampler)
    grace: int | None = None  # None: no pruning
    reduction: int = 2
    brackets: int = 1
    per_backbone: bool = True  # rungs per backbone (bracket_by)
    warmup_aware: bool = True  # no rung inside a trial's warm-up


STRATEGIES = {
    "random": Strategy("random"),
    "TPE": Strategy("tpe"),
    "random+ASHA g8": Strategy("random", 8),
    # the search before issue 16: one set of rungs for both backbones, judged in warm-up
    "TPE+ASHA g3 old": Strategy("tpe", 3, per_backbone=False, warmup_aware=False),
    "TPE+ASHA g3 one rung set": Strategy("tpe", 3, per_backbone=False),
    "TPE+ASHA g3 warm-up blind": Strategy("tpe", 3, warmup_aware=False),
    "TPE+ASHA g3": Strategy("tpe", 3),
    "TPE+ASHA g4": Strategy("tpe", 4),
    "TPE+ASHA g6": Strategy("tpe", 6),
    "TPE+ASHA g8": Strategy("tpe", 8),
    "TPE+ASHA g4 rf3": Strategy("tpe", 4, 3),
    "TPE+HB2 g4 rf3": Strategy("tpe", 4, 3, brackets=2),
    "TPE+HB3 g3": Strategy("tpe", 3, brackets=3),
    "TPE+HB2 g4": Strategy("tpe", 4, brackets=2),
    "TPE+HB2 g6": Strategy("tpe", 6, brackets=2),
}


def strategy_space(strategy: Strategy, space):
    """The demo space with the strategy's sampler-free settings: its rungs (grace period,
    reduction, brackets) and whether they are kept per backbone."""
    import dataclasses

    tune = dataclasses.replace(
        space.tune,
        grace_period=strategy.grace or space.max_epochs,
        reduction_factor=strategy.reduction,
        brackets=strategy.brackets,
        rungs=None,
        bracket_by=space.tune.bracket_by if strategy.per_backbone else None,
    )
    return dataclasses.replace(space, tune=tune)


def simulate(strategy: Strategy, seed: int, num_samples: int, table: Table) -> list[dict]:
    """One search, trials one at a time, through the search's own searcher and scheduler as
    ``search.strategy`` builds them (start points, balance, per-backbone rungs, warm-up,
    brackets) and drives them (``TuneLoop``, in Tune's order of calls); each proposed
    configuration trains as the nearest table row not yet used."""
    import optuna

    from search.strategy import TuneLoop, build_scheduler, build_searcher

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = strategy_space(strategy, _space())  # the demo space parsed once per worker
    random = optuna.samplers.RandomSampler(seed=seed) if strategy.sampler == "random" else None
    scheduler = None
    if strategy.grace is not None:
        scheduler = build_scheduler(space, metric="objective", mode=space.tune.mode)
    loop = TuneLoop(
        build_searcher(space, seed=seed, sampler=random),
        scheduler,
        max_concurrent=1,
        tag=f"{seed:05x}",
    )
    distributions = {b.name: b for p in space.params for b in p.branches}
    used: set[int] = set()
    trials = []
    for _ in range(num_samples):
        trial_id, config = loop.start()
        row = table.nearest(config, distributions, exclude=used)
        used.add(row["index"])
        result = {}
        for epoch, best in enumerate(best_so_far(row["val_mAP"], "max"), 1):
            last = epoch == len(row["val_mAP"])
            result = {"epoch": epoch, "objective": best, "status": "done" if last else "running"}
            if strategy.warmup_aware:
                result["warmup_epochs"] = row["warmup_epochs"]
            if not loop.report(trial_id, result) or last:
                break
        loop.end(trial_id)
        trials.append(
            {
                "index": row["index"],
                "backbone": row["params"]["model.backbone"],
                "epochs": result["epoch"],
                "seconds": sum(row["epoch_seconds"][: result["epoch"]]),
                "complete": result["status"] == "done",
            }
        )
    return trials


def targets(table: Table, backbone: str) -> dict:
    """The backbone's target rows: those whose multi-seed mean (best val mAP per seed) lies
    within one pooled within-configuration std of the best multi-seed mean."""
    seeded = [
        r for r in table.rows if r["params"]["model.backbone"] == backbone and "seed_values" in r
    ]
    means = {r["index"]: float(np.mean(r["seed_values"])) for r in seeded}
    pooled = float(np.sqrt(np.mean([np.var(r["seed_values"], ddof=1) for r in seeded])))
    best = max(means.values())
    rest = [max(r["val_mAP"]) for r in table.rows if r["params"]["model.backbone"] == backbone]
    return {
        "rows": sorted(i for i, m in means.items() if m >= best - pooled),
        "best_mean": best,
        "pooled_std": pooled,
        "seeded": len(seeded),
        "configs": len(rest),
        # the best seed-0 value among rows without seeds: how safely they are left out
        "unseeded_best": max(
            (
                max(r["val_mAP"])
                for r in table.rows
                if r["params"]["model.backbone"] == backbone and "seed_values" not in r
            ),
            default=math.nan,
        ),
    }


def score(trials: list[dict], backbone: str, goal: set[int], budget: int = BUDGET) -> dict:
    """Compute spent on the backbone's trials (epochs, simulated seconds, trials) until one
    of them trains a target row to the end, within the backbone's first ``budget`` trials
    (the demo search's); infinite if none does."""
    epochs = seconds = count = 0.0
    for trial in [t for t in trials if t["backbone"] == backbone][:budget]:
        epochs += trial["epochs"]
        seconds += trial["seconds"]
        count += 1
        if trial["complete"] and trial["index"] in goal:
            return {"epochs": epochs, "seconds": seconds, "trials": count}
    return {"epochs": math.inf, "seconds": math.inf, "trials": math.inf}


def speedup(baseline: float, epochs: float) -> float:
    """Median epochs to target of random search (through the same lookup) over the
    strategy's; 0 where the strategy's median is a miss, inf where only random's is."""
    if math.isinf(epochs):
        return 0.0
    return math.inf if math.isinf(baseline) else baseline / epochs


def summarize(runs: list[dict], keep_runs: bool = True, budget: int | None = None) -> dict:
    """Median and quartiles of the compute to target; a search that never reached it counts
    as infinite compute. ``budget``: also count the searches that reached it within that
    many trials of the backbone (the demo's search: 12 each)."""
    epochs = [r["epochs"] for r in runs]
    out = {
        "reached": sum(math.isfinite(e) for e in epochs),
        "searches": len(runs),
        "median_epochs": float(np.percentile(epochs, 50, method="nearest")),
        "q25_epochs": float(np.percentile(epochs, 25, method="nearest")),
        "q75_epochs": float(np.percentile(epochs, 75, method="nearest")),
        "mean_epochs": float(np.mean(epochs)),
    }
    if runs and "search_epochs" in runs[0]:
        out["median_search_epochs"] = float(np.median([r["search_epochs"] for r in runs]))
        out["complete_share"] = float(np.mean([r["complete_share"] for r in runs]))
    if budget is not None:
        out["budget_trials"] = budget
        out["reached_in_budget"] = sum(r["trials"] <= budget for r in runs)
    if keep_runs:
        out["runs"] = runs
    return out


def _replay_one(job: tuple[str, str, int, int]) -> tuple[str, str, int, list[dict]]:
    table_path, name, seed, num_samples = job
    return table_path, name, seed, simulate(STRATEGIES[name], seed, num_samples, _table(table_path))


@functools.cache
def _table(path: str) -> Table:
    """A table read once per process (a replay worker runs many searches on it)."""
    return Table(path)


@functools.cache
def _space():
    from search.space import load_space

    return load_space(SPACE)


def replay(
    tables: list[Path],
    seeds: int,
    num_samples: int | None,
    strategies=tuple(STRATEGIES),
    workers: int = 2,
    result_name: str = "tabular_replay",
) -> None:
    """Every strategy on every table, ``seeds`` searches each; per table and backbone the
    compute to the multi-seed target, and its ratio to random search without pruning."""
    import multiprocessing as mp

    strategies = ("random", *(n for n in strategies if n != "random"))  # the baseline
    jobs = [
        (str(t), name, seed, num_samples or 2 * BUDGET)
        for t in tables
        for name in strategies
        for seed in range(seeds)
    ]
    with mp.get_context("spawn").Pool(workers) as pool:
        done = pool.map(_replay_one, jobs, chunksize=1)
    out: dict = {}
    lines = []
    for path in tables:
        table = Table(path)
        per_backbone = {}
        for backbone in sorted({r["params"]["model.backbone"] for r in table.rows}):
            goal = targets(table, backbone)
            cells = {}
            for name in strategies:
                runs = [
                    {
                        **score(trials, backbone, set(goal["rows"])),
                        "search_epochs": sum(
                            x["epochs"] for x in trials if x["backbone"] == backbone
                        ),
                        "complete_share": float(
                            np.mean([x["complete"] for x in trials if x["backbone"] == backbone])
                        ),
                    }
                    for t, n, _, trials in done
                    if t == str(path) and n == name
                ]
                cells[name] = summarize(runs, budget=BUDGET)
            for cell in cells.values():  # against random search through the same lookup
                cell["speedup"] = speedup(cells["random"]["median_epochs"], cell["median_epochs"])
            per_backbone[backbone] = {"target": goal, "strategies": cells}
            lines.append(
                f"{Path(path).stem} {backbone} (target: {len(goal['rows'])} of "
                f"{goal['configs']} rows, mean >= {goal['best_mean'] - goal['pooled_std']:.1f}): "
                + ", ".join(
                    f"{n} {c['reached']}/{seeds} ({c['reached_in_budget']} in {BUDGET}) "
                    f"{c['median_epochs']:.0f} ({c['speedup']:.1f}x)"
                    for n, c in cells.items()
                )
            )
        out[str(path)] = per_backbone
    emit(
        result_name,
        "; ".join(lines),
        {
            "seeds": seeds,
            "num_samples": num_samples,
            "tables": out,
            "strategies": {n: STRATEGIES[n].__dict__ for n in strategies},
        },
    )


def markdown(name: str = "tabular_replay") -> None:
    """The replay's results (bench/results/NAME.json) as a Markdown table: a row per
    strategy, a column per table and backbone: searches that reached the target within the
    demo's 12 trials per backbone, median epochs to it (a miss counts as infinite), and the
    speed-up over random search through the same lookup (ratio of medians)."""
    from bench.common import RESULTS

    doc = json.loads((RESULTS / f"{name}.json").read_text())
    cells = [
        (Path(t).stem.removeprefix("tabular_").upper(), b, c)
        for t, per in doc["tables"].items()
        for b, c in per.items()
    ]
    print("| strategy | " + " | ".join(f"{t} {b}" for t, b, _ in cells) + " |")
    print("| --- " * (len(cells) + 1) + "|")
    first = cells[0][2]
    for strategy in first["strategies"]:
        row = []
        for _, _, c in cells:
            s = c["strategies"][strategy]
            median = "inf" if math.isinf(s["median_epochs"]) else f"{s['median_epochs']:.0f}"
            ratio = f"{s['speedup']:.1f}x" if s["speedup"] else "- (most searches missed)"
            row.append(f"{s['reached']}/{s['searches']}, {median}, {ratio}")
        print(f"| {strategy} | " + " | ".join(row) + " |")
    print()

    def target(g: dict) -> str:
        return (
            f"{len(g['rows'])} of {g['configs']} rows, mean >= "
            f"{g['best_mean'] - g['pooled_std']:.1f} (best {g['best_mean']:.1f}, "
            f"std {g['pooled_std']:.1f}; {g['seeded']} rows x 4 seeds)"
        )

    print("| target | " + " | ".join(target(c["target"]) for _, _, c in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--configs", type=int, default=60)
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--sample-seed", type=int, default=12345, help="seed of the sampled configs")
    b.add_argument("--table", type=Path, default=TABLE, help="where to write the table")
    b.add_argument("--top", type=int, default=8, help="rows per backbone given more seeds")
    b.add_argument("--seeds", type=int, default=4, help="seeds of those rows, seed 0 included")
    x = sub.add_parser("seed", help="seed more rows until no unseeded row can be a target")
    x.add_argument("--table", type=Path, default=TABLE)
    x.add_argument("--workers", type=int, default=2)
    d = sub.add_parser("describe")
    d.add_argument("--table", type=Path, default=TABLE)
    r = sub.add_parser("replay")
    r.add_argument("--tables", type=Path, nargs="+", default=TABLES)
    r.add_argument("--seeds", type=int, default=20, help="searches per strategy and table")
    r.add_argument("--num-samples", type=int, help="trials per search (default: the demo's 24)")
    r.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--name", default="tabular_replay", help="result name (bench/results/)")
    m = sub.add_parser("markdown", help="the replay's results as a Markdown table")
    m.add_argument("--name", default="tabular_replay")
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.configs, args.workers, args.table, args.sample_seed, args.top, args.seeds)
    elif args.cmd == "markdown":
        markdown(args.name)
    elif args.cmd == "seed":
        extend_seeds(args.table, args.workers)
    elif args.cmd == "describe":
        describe(args.table)
    else:
        replay(
            args.tables,
            args.seeds,
            args.num_samples,
            tuple(args.strategies),
            args.workers,
            args.name,
        )


if __name__ == "__main__":
    main()
