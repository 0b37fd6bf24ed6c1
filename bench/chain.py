"""The whole comparison chain on synthetic learning curves, without training (issue 23).

Per-configuration quality, seed noise and split noise go through the project's own code:
the searcher and scheduler (``search.strategy``, driven as Tune drives them, trials one at a
time), early stopping (``handreid.train.early_stopping``), the confirmation's choice of each
backbone's winner (``search.confirm.summary``, over ``search.confirm.wanted_runs``' seeds),
its scoring runs (``tune.confirm.score_seeds`` fresh seed effects of that winner, drawn here as
``search.confirm.scoring_runs`` plans them: new seeds, none of which chose) and the verdict
(``analysis.confirm.difference_interval``). Each quantity is measured for the shipped chain
and for the chain before issue 23 (one TPE over both backbones, the winner scored on the
seeds that chose it, patience counted inside the warm-up), on the same synthetic worlds:

    python -m bench.chain run [--chains 60] [--repeats 20] [--json bench/results/chain.json]
    python -m bench.chain markdown --json bench/results/chain.json

The synthetic world. A configuration's quality (true test mAP) is its backbone's level less
penalties for an ArcFace scale away from the backbone's own best scale, a margin away from
0.3 and a learning rate away from the middle of the backbone's (log) range. A run of it
with some seed adds a seed effect (normal, the backbone's seed std), the same on validation
and test. Its validation curve rises from 10 points below the quality to the quality plus
the seed effect, with per-epoch noise; OneCycle with a learning rate in the top third of
its range dips through the warm-up (the dip BENCHMARKS shows on the demo). Test scores are
per query/gallery split: quality + seed effect + a split effect shared by both backbones
(the same splits) + a small interaction.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPLITS = 10


@dataclass(frozen=True)
class World:
    level: dict[str, float]  # backbone -> quality at its optimum
    best_scale: dict[str, float]  # backbone -> its best ArcFace scale
    seed_std: dict[str, float]  # backbone -> seed-to-seed std of a run
    split_std: float = 1.5
    epoch_noise: float = 0.7  # validation noise per epoch (one image per identity)
    dip: float = 15.0  # a high learning rate's OneCycle warm-up dip


@dataclass(frozen=True)
class Chain:
    """Which chain: the shipped one, or the one before issue 23."""

    grouped: bool = True  # one TPE per backbone (else one over both)
    fresh: bool = True  # the winner scored on fresh seeds (else on the seeds that chose it)
    warmup_stop: bool = True  # patience not counted inside the warm-up

    @property
    def name(self) -> str:
        return "shipped" if self.grouped else "before"


SHIPPED, BEFORE = Chain(), Chain(grouped=False, fresh=False, warmup_stop=False)


# ------------------------------------------------------------------ the synthetic world


def lr_position(space, params: dict[str, Any]) -> float:
    """Where the trial's visual learning rate sits in its (log) range: 0 low, 1 high."""
    for param in space.params:
        if param.key != "optim.lr_visual":
            continue
        for branch in param.branches:
            if branch.name in params:
                lo, hi, x = map(math.log, (branch.low, branch.high, params[branch.name]))
                return (x - lo) / (hi - lo)
    return 0.5


def quality(world: World, space, params: dict[str, Any]) -> float:
    backbone = params["model.backbone"]
    scale = params.get("loss.arcface.scale", world.best_scale[backbone])
    margin = params.get("loss.arcface.margin", 0.3)
    lr = lr_position(space, params)
    return (
        world.level[backbone]
        - 0.4 * abs(scale - world.best_scale[backbone])
        - 15.0 * abs(margin - 0.3)
        - 8.0 * abs(lr - 0.5)
    )


def val_curve(world, space, params, effect: float, rng, warmup: float) -> list[float]:
    q = quality(world, space, params) + effect
    epochs = space.max_epochs
    dips = params.get("optim.scheduler") == "onecycle" and lr_position(space, params) > 2 / 3
    out = []
    for e in range(1, epochs + 1):
        value = q - 10.0 * math.exp(-e / 3.0) + rng.normal(0.0, world.epoch_noise)
        if dips and 1 < e <= warmup:  # past its first epoch, down and back by the peak
            value -= world.dip * math.sin(math.pi * (e - 1) / max(warmup - 1, 1.0))
        out.append(value)
    return out


def test_scores(world: World, q: float, effects: np.ndarray, splits: np.ndarray, rng) -> np.ndarray:
    """(seeds, splits) test mAP of runs with these seed effects, on the shared splits."""
    inter = rng.normal(0.0, 0.5, size=(len(effects), len(splits)))
    return q + effects[:, None] + splits[None, :] + inter


# ------------------------------------------------------------------ one search


def warmup_of(space, params: dict[str, Any]) -> float:
    from handreid.train.optim import warmup_epochs

    cfg = space.trial_config(params)
    return warmup_epochs(cfg.optim.scheduler, cfg.optim.warmup_epochs, cfg.train.epochs)


def stop_epoch(curve: list[float], patience: int, first: int) -> int | None:
    """The epoch early stopping ends this curve at, or None."""
    from handreid.train.early_stopping import should_stop

    for epoch in range(1, len(curve)):
        if should_stop(curve[:epoch], patience, first):
            return epoch
    return None


def search(space, world: World, chain: Chain, seed: int) -> list[dict]:
    """One search through the searcher and scheduler the product builds; each trial's run
    trains with seed effect drawn for (backbone, seed 0)."""
    import optuna

    from handreid.train.early_stopping import first_judged_epoch
    from search.strategy import TuneLoop, build_scheduler, build_searcher, judged_from, tpe

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng([seed, 1])
    t = space.tune
    sampler = None if chain.grouped else tpe(seed, t.n_startup_trials)
    loop = TuneLoop(
        build_searcher(space, seed=seed, sampler=sampler),
        build_scheduler(space, metric="objective", mode=t.mode),
        max_concurrent=1,
        tag=f"{seed:05x}",
    )
    patience = space.base.train.patience
    trials = []
    for _ in range(t.num_samples):
        trial_id, params = loop.start()
        backbone = params["model.backbone"]
        warmup = warmup_of(space, params)
        effect = rng.normal(0.0, world.seed_std[backbone])
        curve = val_curve(world, space, params, effect, rng, warmup)
        first = first_judged_epoch(warmup, t.judge_after, len(curve)) if chain.warmup_stop else 1
        stopped = stop_epoch(curve, patience, first)
        best, status, result = -math.inf, "running", {}
        for epoch, value in enumerate(curve, 1):
            best = max(best, value)
            end = epoch == len(curve) or epoch == stopped
            status = "early_stopped" if epoch == stopped else ("done" if end else "running")
            result = {
                "epoch": epoch,
                "objective": best,
                "status": status,
                **judged_from(warmup, t.judge_after, len(curve)),
            }
            if not loop.report(trial_id, result) or end:
                break
        loop.end(trial_id)
        trials.append(
            {
                "trial_id": trial_id,
                "params": params,
                "backbone": backbone,
                "best": best,
                "epochs": result["epoch"],
                "status": "complete" if status != "running" else "pruned",
                "in_warmup_stop": status == "early_stopped" and result["epoch"] <= warmup,
                "effect": effect,
            }
        )
    return trials


# ------------------------------------------------------------------ confirmation, scoring


def search_table(trials: list[dict], metric: str):
    import pandas as pd

    table = pd.DataFrame(
        {
            "trial_id": [t["trial_id"] for t in trials],
            "role": "search",
            "config_id": [t["trial_id"] for t in trials],
            "backbone": [t["backbone"] for t in trials],
            "status": [t["status"] for t in trials],
            f"best_{metric}": [t["best"] for t in trials],
            "train_seed": 0,
            "path": [f"/sim/trial_{t['trial_id']}" for t in trials],
        }
    )
    return table.sort_values(f"best_{metric}", ascending=False)


def confirmation(space, world: World, trials: list[dict], rng) -> dict[str, dict]:
    """The confirmation runs the product plans (``wanted_runs``), trained as full-length
    synthetic runs, and each backbone's winner (``summary``); per backbone: the winner's
    parameters, true quality and the seed effects of the runs that chose it."""
    from types import SimpleNamespace

    import pandas as pd

    from search.confirm import summary, wanted_runs

    metric = space.tune.metric
    table = search_table(trials, metric)
    by_id = {t["trial_id"]: t for t in trials}
    results = {f"trial_{t['trial_id']}": SimpleNamespace(config=t["params"]) for t in trials}
    runs = wanted_runs(space, table, results, space.tune.confirm.seeds)
    rows, effects = [], {t["trial_id"]: [t["effect"]] for t in trials}
    for run in runs:
        backbone = run.params["model.backbone"]
        effect = rng.normal(0.0, world.seed_std[backbone])
        curve = val_curve(world, space, run.params, effect, rng, warmup_of(space, run.params))
        effects[run.config_id].append(effect)
        rows.append(
            {
                "trial_id": run.key,
                "role": "confirm",
                "config_id": run.config_id,
                "backbone": backbone,
                "status": "complete",
                f"best_{metric}": max(curve),
                "train_seed": run.train_seed,
            }
        )
    configs = summary(space, pd.concat([table, pd.DataFrame(rows)], ignore_index=True))
    out = {}
    for w in configs[configs["winner"]].itertuples():
        params = by_id[w.config_id]["params"]
        out[w.backbone] = {
            "config_id": w.config_id,
            "params": params,
            "quality": quality(world, space, params),
            "chose": np.array(effects[w.config_id]),
        }
    return out


def scored(space, world: World, chain: Chain, winner: dict, splits, rng) -> np.ndarray:
    """The (seeds, splits) test scores the chain reports for a winner: fresh seeds
    (``score_seeds`` of them) or the seeds that chose it."""
    backbone = winner["params"]["model.backbone"]
    if chain.fresh:
        count = space.tune.confirm.score_seeds
        effects = rng.normal(0.0, world.seed_std[backbone], size=count)
    else:
        effects = winner["chose"]
    return test_scores(world, winner["quality"], effects, splits, rng)


def verdict(a: np.ndarray, b: np.ndarray) -> int:
    """+1: "a is better", -1: "b is better", 0: no difference stated (as the report's
    verdict, which states none below ``MIN_SEEDS`` scoring seeds per backbone)."""
    from analysis.confirm import MIN_SEEDS, difference_interval

    if min(len(a), len(b)) < MIN_SEEDS:
        return 0
    interval = difference_interval(a, b, paired=True)
    return 1 if interval.low > 0 else (-1 if interval.high < 0 else 0)


# ------------------------------------------------------------------ measurements


@dataclass
class Tally:
    """What the chains of one setting measured."""

    weak_late_scale: list[float] = field(default_factory=list)  # median, per chain
    alone_late_scale: list[float] = field(default_factory=list)
    bias: dict[str, list[float]] = field(default_factory=dict)  # backbone -> test - truth
    verdicts: list[int] = field(default_factory=list)
    truth: list[float] = field(default_factory=list)  # the winners' true quality, a - b
    in_warmup: list[float] = field(default_factory=list)  # share of trials, per chain
    complete: dict[str, list[int]] = field(default_factory=dict)


def late_scales(trials: list[dict], backbone: str) -> list[float]:
    own = [t["params"]["loss.arcface.scale"] for t in trials if t["backbone"] == backbone]
    return own[len(own) // 2 :]


def one_chain(space, world: World, chain: Chain, seed: int, repeats: int, tally: Tally) -> None:
    trials = search(space, world, chain, seed)
    rng = np.random.default_rng([seed, 2])
    backbones = list(world.level)
    weak = min(backbones, key=world.level.__getitem__)
    tally.weak_late_scale.append(float(np.median(late_scales(trials, weak))))
    tally.in_warmup.append(float(np.mean([t["in_warmup_stop"] for t in trials])))
    for b in backbones:
        done = sum(t["status"] == "complete" and t["backbone"] == b for t in trials)
        tally.complete.setdefault(b, []).append(done)
    if any(
        not any(t["backbone"] == b and t["status"] == "complete" for t in trials) for b in backbones
    ):
        return  # a backbone without a complete trial has no winner
    winners = confirmation(space, world, trials, rng)
    for _ in range(repeats):
        splits = rng.normal(0.0, world.split_std, size=SPLITS)
        scores = {b: scored(space, world, chain, winners[b], splits, rng) for b in backbones}
        for b in backbones:
            tally.bias.setdefault(b, []).append(float(scores[b].mean() - winners[b]["quality"]))
        tally.verdicts.append(verdict(scores[backbones[0]], scores[backbones[1]]))
        tally.truth.append(winners[backbones[0]]["quality"] - winners[backbones[1]]["quality"])


def alone_space(space, backbone: str):
    """The space with the backbone fixed: each parameter's branch for that backbone, its
    condition on the backbone dropped, as a study of that backbone alone would search."""
    from search.space import Param

    params = []
    for param in space.params:
        if param.key == "model.backbone":
            continue
        branch = param.branch_for({"model.backbone": backbone, "loss.center.use": True})
        when = tuple((k, v) for k, v in branch.when if k != "model.backbone")
        params.append(Param(param.key, (dataclasses.replace(branch, name=param.key, when=when),)))
    tune = dataclasses.replace(space.tune, num_samples=space.tune.num_samples // 2, balance=None)
    fixed = {**space.fixed, "model.backbone": backbone}
    points = [
        {k: v for k, v in p.items() if k != "model.backbone"}
        for p in space.start_points
        if p.get("model.backbone") == backbone
    ]
    return dataclasses.replace(space, params=params, tune=tune, fixed=fixed, start_points=points)


def alone_chain(space, world: World, backbone: str, seed: int) -> float:
    """The median late ArcFace scale of a study of ``backbone`` alone (TPE, same settings)."""
    import optuna

    from search.strategy import build_searcher

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    alone = alone_space(space, backbone)
    searcher = build_searcher(alone, seed=seed)
    rng = np.random.default_rng([seed, 3])
    scales = []
    for n in range(alone.tune.num_samples):
        params = searcher.suggest(f"a{n}")
        full = {**params, "model.backbone": backbone}
        value = quality(world, alone, full) + rng.normal(0.0, world.seed_std[backbone])
        searcher.on_trial_complete(f"a{n}", {"objective": value, "epoch": 1, "status": "done"})
        scales.append(params["loss.arcface.scale"])
    return float(np.median(scales[len(scales) // 2 :]))


SETTINGS: dict[str, dict[str, Any]] = {
    # (a), (b), (e): the sampling case: tiny-rn 20 points higher, opposite scales
    "apart": {"level": (30.0, 50.0), "seed_std": (3.0, 3.0)},
    # (c): true ties
    "tie 3/3": {"level": (40.0, 40.0), "seed_std": (3.0, 3.0)},
    "tie 5/2": {"level": (40.0, 40.0), "seed_std": (5.0, 2.0)},
    "tie 5/2 unbalanced": {"level": (40.0, 40.0), "seed_std": (5.0, 2.0), "balance": None},
    # (d): power for a true 5-point gap
    "gap 5": {"level": (45.0, 40.0), "seed_std": (3.0, 3.0)},
}


def world_for(space, setting: dict[str, Any]) -> World:
    backbones = space.group_key()[1]
    return World(
        level=dict(zip(backbones, setting["level"])),
        best_scale=dict(zip(backbones, (10.0, 40.0))),
        seed_std=dict(zip(backbones, setting["seed_std"])),
    )


def space_for(
    path: Path, setting: dict[str, Any], patience: int | None = None, samples: int | None = None
):
    from handreid.config import apply_overrides
    from search.space import load_space

    space = load_space(path)
    if "balance" in setting:
        space = dataclasses.replace(
            space, tune=dataclasses.replace(space.tune, balance=setting["balance"])
        )
    if samples is not None:
        space = dataclasses.replace(
            space, tune=dataclasses.replace(space.tune, num_samples=samples)
        )
    if patience is not None:
        space = dataclasses.replace(
            space, base=apply_overrides(space.base, {"train.patience": patience})
        )
    return space


def measure(path: Path, name: str, chain: Chain, chains: int, repeats: int, **kw) -> dict:
    setting = SETTINGS[name]
    space = space_for(path, setting, kw.get("patience"), kw.get("samples"))
    world = world_for(space, setting)
    tally = Tally()
    for seed in range(chains):
        one_chain(space, world, chain, seed, repeats, tally)
    weak = min(world.level, key=world.level.__getitem__)
    out = summarise(tally, weak)
    if name == "apart":
        alone = [alone_chain(space, world, weak, seed) for seed in range(chains)]
        out["alone_late_scale_median"] = float(np.median(alone))
        out["alone_below_20"] = float(np.mean([a < 20 for a in alone]))
    return {"setting": name, "chain": chain.name, "chains": chains, "repeats": repeats, **out}


def _mean_sem(values: list[float]) -> tuple[float, float]:
    x = np.asarray(values, dtype=float)
    sem = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
    return float(x.mean()) if len(x) else math.nan, sem


def summarise(tally: Tally, weak: str) -> dict:
    verdicts, truth = np.asarray(tally.verdicts), np.asarray(tally.truth)
    wrong = (verdicts != 0) & (verdicts != np.sign(truth))  # against the winners' truth
    return {
        "wrong_better": float(np.mean(wrong)) if verdicts.size else math.nan,
        "winner_gap": _mean_sem(list(truth)),
        "weak": weak,
        "weak_late_scale_median": float(np.median(tally.weak_late_scale)),
        "weak_below_20": float(np.mean([x < 20 for x in tally.weak_late_scale])),
        "bias": {b: _mean_sem(v) for b, v in tally.bias.items()},
        "first_better": float(np.mean(verdicts == 1)) if verdicts.size else math.nan,
        "second_better": float(np.mean(verdicts == -1)) if verdicts.size else math.nan,
        "verdicts": int(verdicts.size),
        "in_warmup_share": float(np.mean(tally.in_warmup)),
        "complete": {b: float(np.mean(v)) for b, v in tally.complete.items()},
    }


def run(args) -> int:
    rows = []
    for name in args.settings:
        for chain in (BEFORE, SHIPPED):
            row = measure(Path(args.space), name, chain, args.chains, args.repeats, patience=5)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def markdown(args) -> int:
    rows = json.loads(Path(args.json).read_text())
    print(
        "| setting | chain | (a) weaker backbone's late ArcFace scale, median (share < 20) "
        "| (b) bias of the winners' test mean | (c, d) 'first better' / 'second better' | "
        "claims against the winners' truth | winners' true gap | (e) stopped inside warm-up |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        bias = ", ".join(f"{b} {m:+.2f} ± {s:.2f}" for b, (m, s) in r["bias"].items())
        scale = "—"
        if "alone_late_scale_median" in r:
            scale = (
                f"{r['weak_late_scale_median']:.1f} ({r['weak_below_20']:.0%}); alone "
                f"{r['alone_late_scale_median']:.1f} ({r['alone_below_20']:.0%})"
            )
        gap, sem = r.get("winner_gap", (math.nan, math.nan))
        print(
            f"| {r['setting']} | {r['chain']} | {scale} | {bias} | {r['first_better']:.1%} / "
            f"{r['second_better']:.1%} | {r.get('wrong_better', math.nan):.1%} | "
            f"{gap:+.2f} ± {sem:.2f} | {r['in_warmup_share']:.1%} |"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chain", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--space", default=str(REPO / "spaces" / "compare.yml"))
    r.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    r.add_argument("--chains", type=int, default=60)
    r.add_argument("--repeats", type=int, default=20)
    r.add_argument("--json")
    m = sub.add_parser("markdown")
    m.add_argument("--json", required=True)
    args = p.parse_args(argv)
    return run(args) if args.cmd == "run" else markdown(args)


if __name__ == "__main__":
    sys.exit(main())
