"""The confirmation stage of a run and the backbone verdict: files only, no Ray, no Optuna.

After the search, ``handreid-search`` can retrain the top-k configurations of each backbone
with more training seeds (same identity split). ``confirm.csv`` has one row per confirmed
configuration; ``best/<backbone>/test_metrics.json`` holds the test protocol (10
query/gallery splits) for each scoring seed of the backbone's confirmed winner (``seeds``;
the runs that chose the winner, listed under ``selection`` beside them, are not read).

The verdict compares two winners by the difference of their test metrics, mean over seeds
x splits, with a t interval whose variance has a part for each backbone's seeds and one for
the splits (the splits are the same query/gallery splits for every backbone: a paired
design, so shared split effects cancel); see :func:`difference_interval`. Below
``MIN_SEEDS`` scored seeds of a backbone it states no verdict and says how many it needs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from analysis.load import ReportError

VERDICT_METRICS = ("mAP", "rank1")
LABELS = {"mAP": "mAP", "rank1": "Rank-1", "rank5": "Rank-5", "rank10": "Rank-10"}
LEVEL = 0.95


@dataclass
class SeedScore:
    """One training seed of a winner on the test protocol: each metric per split (%)."""

    trial_id: str
    train_seed: int | None
    val: float
    per_split: dict[str, np.ndarray]  # metric -> one value per query/gallery split


@dataclass
class Winner:
    """A backbone's confirmed winner and its scored seeds."""

    backbone: str
    config_id: str
    run: str
    single_seed_winner: str | None
    val_mean: float
    val_std: float
    seeds: list[SeedScore]
    failed: list[str] = field(default_factory=list)  # one line per seed that has no score
    splits_key: tuple | None = None  # the test splits (from split.json), to prove pairing

    @property
    def same_as_single_seed(self) -> bool | None:
        if self.single_seed_winner is None:
            return None
        return self.single_seed_winner == self.config_id

    @property
    def n_splits(self) -> int:
        return min((len(s.per_split["mAP"]) for s in self.seeds), default=0)

    def scores(self, metric: str) -> np.ndarray:
        """(seeds, splits) array of ``metric`` (%), splits cut to the shortest seed's."""
        n = self.n_splits
        return np.array([s.per_split[metric][:n] for s in self.seeds], dtype=float)


@dataclass
class Confirmation:
    metric: str  # the search objective, e.g. val_mAP
    backbones: list[str]  # in the order the run lists them
    configs: pd.DataFrame  # confirm.csv, with a ``run`` column
    seed_values: pd.DataFrame  # backbone, config_id, trial_id, role, train_seed, value
    winners: dict[str, Winner]  # backbone -> winner (absent: no test_metrics.json)
    runs: list[str]


# ------------------------------------------------------------------ load


def load_confirmation(run_dir: str | Path) -> Confirmation | None:
    """The run's confirmation stage, or None when it had none (no confirm.csv)."""
    run_dir = Path(run_dir)
    path = run_dir / "confirm.csv"
    if not path.is_file():
        return None
    meta = _meta(run_dir)
    run = meta.get("name", run_dir.name)
    configs = _read_confirm_csv(path)
    configs.insert(0, "run", run)
    order = _run_order(meta, list(dict.fromkeys(configs["backbone"])))
    configs["_order"] = configs["backbone"].map(order.index)
    configs = configs.sort_values(["_order", "confirmed_rank"], kind="stable")
    configs = configs.drop(columns="_order").reset_index(drop=True)
    metric = meta.get("metric", "val_mAP")
    winners = {}
    for backbone in order:
        doc = _read_json(run_dir / "best" / backbone / "test_metrics.json")
        if doc is not None:
            winners[backbone] = _winner(backbone, run, doc, configs, run_dir)
    return Confirmation(
        metric=metric,
        backbones=order,
        configs=configs,
        seed_values=_seed_values(run_dir, configs, metric, winners),
        winners=winners,
        runs=[run],
    )


def load_confirmations(run_dirs: list[str | Path]) -> Confirmation | None:
    """Several run directories' confirmations as one (e.g. a ViT and an RN50 search), or
    None when none has one. A backbone confirmed in two runs keeps the first run's."""
    parts = [c for c in (load_confirmation(d) for d in run_dirs) if c is not None]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    backbones = list(dict.fromkeys(b for p in parts for b in p.backbones))
    owner = {b: next(p for p in parts if b in p.backbones) for b in backbones}

    def keep(part: Confirmation, df: pd.DataFrame) -> pd.DataFrame:
        return df[df["backbone"].map(lambda b: owner[b] is part)]

    return Confirmation(
        metric=parts[0].metric,
        backbones=backbones,
        configs=pd.concat([keep(p, p.configs) for p in parts], ignore_index=True),
        seed_values=pd.concat([keep(p, p.seed_values) for p in parts], ignore_index=True),
        winners={b: owner[b].winners[b] for b in backbones if b in owner[b].winners},
        runs=[r for p in parts for r in p.runs],
    )


def _meta(run_dir: Path) -> dict[str, Any]:
    return _read_json(run_dir / "search.json") or {}


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: malformed JSON ({err.msg})") from None


def _read_confirm_csv(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, dtype={"config_id": str, "backbone": str})
    need = {"backbone", "config_id", "val_mean", "confirmed_rank", "winner"}
    if missing := sorted(need - set(table.columns)):
        raise ReportError(f"{path}: missing columns {', '.join(missing)}")
    table["winner"] = table["winner"].map(_truth)
    for col in ("runs", "single_seed_rank", "confirmed_rank"):
        if col in table:
            table[col] = pd.to_numeric(table[col], errors="coerce").astype("Int64")
    return table


def _truth(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) and not (isinstance(value, float) and math.isnan(value))


def _run_order(meta: dict[str, Any], listed: list[str]) -> list[str]:
    """The backbones in the order the run's search space lists them, then any others."""
    choices: list[str] = []
    for spec in (meta.get("distributions") or {}).values():
        if spec.get("key") == "model.backbone":
            choices += [str(c) for c in spec.get("choices") or []]
    ordered = [b for b in dict.fromkeys(choices) if b in listed]
    return ordered + [b for b in listed if b not in ordered]


def _winner(backbone: str, run: str, doc: dict, configs: pd.DataFrame, run_dir: Path) -> Winner:
    rows = configs[configs["backbone"] == backbone]
    config_id = str(doc.get("config_id") or doc.get("trial_id"))  # whose scores these are
    seeds, failed = _seeds(doc)
    single = doc.get("single_seed_winner")
    if single is None and "single_seed_rank" in rows:
        first = rows[rows["single_seed_rank"] == 1]
        single = str(first["config_id"].iloc[0]) if len(first) else None
    own = rows[rows["config_id"] == config_id].to_dict("records")
    val_mean = doc.get("val_mean", own[0]["val_mean"] if own else math.nan)
    val_std = doc.get("val_std", own[0].get("val_std") if own else math.nan)
    return Winner(
        backbone=backbone,
        config_id=config_id,
        run=run,
        single_seed_winner=None if single is None else str(single),
        val_mean=_num(val_mean),
        val_std=_num(val_std),
        seeds=seeds,
        failed=failed,
        splits_key=_splits_key(run_dir / "best" / backbone / "split.json"),
    )


def _seeds(doc: dict) -> tuple[list[SeedScore], list[str]]:
    """The scored seeds of a test_metrics.json; an old-format file (no ``seeds``) is one."""
    if "seeds" not in doc:
        doc = {"seeds": [{"trial_id": doc.get("trial_id"), "train_seed": None, **doc}]}
    seeds, failed = [], []
    for s in doc["seeds"]:
        name = f"trial {s.get('trial_id')} (train seed {s.get('train_seed')})"
        splits = s.get("per_split") or []
        if s.get("error") or not splits:
            failed.append(f"{name}: {s.get('error') or 'no per-split scores'}")
            continue
        per_split = {m: np.array([_num(p.get(m)) for p in splits], dtype=float) for m in LABELS}
        if not np.isfinite(per_split["mAP"]).all():
            failed.append(f"{name}: non-finite test mAP")
            continue
        seed = s.get("train_seed")
        seeds.append(
            SeedScore(
                trial_id=str(s.get("trial_id")),
                train_seed=None if seed is None else int(seed),
                val=_num(s.get("val")),
                per_split=per_split,
            )
        )
    return seeds, failed


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _splits_key(path: Path) -> tuple | None:
    """The query/gallery splits of a split.json as (image name, id) tuples, or None."""
    doc = _read_json(path)
    if not doc or "test_splits" not in doc:
        return None

    def items(rows):
        return tuple((Path(str(r.get("image"))).name, str(r.get("id"))) for r in rows)

    return tuple((items(s["query"]), items(s["gallery"])) for s in doc["test_splits"])


def _seed_values(run_dir: Path, configs: pd.DataFrame, metric: str, winners) -> pd.DataFrame:
    """Each confirmed configuration's validation value per seed, from trials.csv (the
    search's run and the confirmation's); the winners' seeds in test_metrics.json fill in
    when trials.csv lacks them."""
    columns = ["backbone", "config_id", "trial_id", "role", "train_seed", "value"]
    rows = []
    path = run_dir / "trials.csv"
    best = f"best_{metric}"
    if path.is_file():
        trials = pd.read_csv(path, dtype={"trial_id": str, "config_id": str})
        if "config_id" not in trials:
            trials["config_id"] = trials["trial_id"]
        trials["config_id"] = trials["config_id"].fillna(trials["trial_id"])
        if best in trials:
            wanted = set(zip(configs["backbone"], configs["config_id"]))
            for r in trials.to_dict("records"):
                if (r.get("backbone"), r["config_id"]) in wanted and _finite(r.get(best)):
                    role = r.get("role") if isinstance(r.get("role"), str) else "search"
                    seed = r.get("train_seed")
                    rows.append(
                        [
                            r["backbone"],
                            r["config_id"],
                            r["trial_id"],
                            role,
                            int(seed) if _finite(seed) else None,
                            float(r[best]),
                        ]
                    )
    have = {(r[0], r[1]) for r in rows}
    for w in winners.values():
        if (w.backbone, w.config_id) in have:
            continue
        rows += [
            [w.backbone, w.config_id, s.trial_id, "", s.train_seed, s.val]
            for s in w.seeds
            if _finite(s.val)
        ]
    return pd.DataFrame(rows, columns=columns)


def _finite(value: Any) -> bool:
    number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    return number and math.isfinite(value)


# ------------------------------------------------------------------ interval


MIN_SEEDS = 2  # per backbone: below this a seed spread cannot be estimated, so no verdict


class Interval(NamedTuple):
    """A difference of means and its interval; each field an array for batched input."""

    value: Any
    low: Any
    high: Any
    df: float  # the Student-t degrees of freedom of the interval


def difference_interval(
    a: np.ndarray, b: np.ndarray, *, paired: bool = True, level: float = LEVEL
) -> Interval:
    """Mean of ``a`` minus mean of ``b`` (each ``(..., seeds, splits)``; leading axes are a
    batch, e.g. simulations) and the interval ``value ± t * sd``.

    The variance of the difference has one part per source of noise, each estimated from
    the scores: each backbone's seeds (the variance of its per-seed means over splits, over
    its seed count) and the splits (the variance of the per-split difference of the two
    seed means, over the split count; with unpaired splits each backbone's per-split means
    apart). Shared split effects cancel in a paired difference. The per-split spread also
    carries each score's own noise once more: a slight overstatement, on the safe side.

    Degrees of freedom: one fewer than the fewest levels of any part (seeds of either
    backbone, splits), Hsu's conservative choice. With normal noise it calls a tie better
    at most ``(1 - level) / 2`` of the time per side, whatever the ratio of the backbones'
    seed spreads (Mickey & Brown, 1966, for two parts; with the splits' part too in
    ``bench.verdict_power``'s simulations). Welch-Satterthwaite degrees of freedom do not:
    with 2 seeds of a backbone whose seeds vary 5 points against 5 of one whose vary 2
    they did so over 5% of the time per side, and 2.5-3% with 3-5 seeds of each. The
    price is power at few seeds (BENCHMARKS.md)."""
    a, b = _checked(a, b, paired)
    value = a.mean(axis=(-2, -1)) - b.mean(axis=(-2, -1))
    parts = _variance_parts(a, b, paired)
    df = float(min(n for _, n in parts) - 1)
    half = _t_quantile(0.5 + level / 2, df) * np.sqrt(sum(v for v, _ in parts))
    return Interval(*(_plain(x) for x in (value, value - half, value + half)), df)


def bootstrap_interval(
    a: np.ndarray,
    b: np.ndarray,
    *,
    paired: bool = True,
    level: float = LEVEL,
    replicates: int | None = None,
    seed: int | None = None,
) -> Interval:
    """The former name of :func:`difference_interval`, for callers of the bootstrap it
    replaced; ``replicates`` and ``seed`` are ignored (the interval draws nothing)."""
    return difference_interval(a, b, paired=paired, level=level)


def _checked(a: Any, b: Any, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim < 2 or b.ndim < 2 or not a.size or not b.size:
        raise ValueError("a and b must be non-empty (seeds x splits) arrays")
    if min(a.shape[-2], b.shape[-2]) < MIN_SEEDS:
        raise ValueError(f"an interval needs at least {MIN_SEEDS} seeds of each backbone")
    if paired and a.shape[-1] != b.shape[-1]:
        raise ValueError(f"paired splits need the same count, got {a.shape[-1]} and {b.shape[-1]}")
    return a, b


def _variance_parts(a: np.ndarray, b: np.ndarray, paired: bool) -> list[tuple[Any, int]]:
    """(variance of the difference from one source, that source's level count) per source."""
    parts = [_spread(a.mean(axis=-1)), _spread(b.mean(axis=-1))]
    if paired:
        splits = [a.mean(axis=-2) - b.mean(axis=-2)]
    else:
        splits = [a.mean(axis=-2), b.mean(axis=-2)]
    return parts + [_spread(m) for m in splits if m.shape[-1] > 1]


def _spread(levels: np.ndarray) -> tuple[Any, int]:
    """The variance of the mean of ``levels`` (last axis), and how many there are."""
    n = levels.shape[-1]
    return levels.var(axis=-1, ddof=1) / n, n


def _plain(x: np.ndarray) -> Any:
    return float(x) if np.ndim(x) == 0 else x


def _t_quantile(q: float, df: float) -> float:
    from scipy.stats import t  # scipy: scikit-learn's dependency; loaded only here

    return float(t.ppf(q, df))


@dataclass
class Difference:
    """``a`` minus ``b`` in ``metric`` (percentage points), mean over seeds x splits, with
    a t interval (``df``: its degrees of freedom); no interval (NaN) below ``MIN_SEEDS``
    seeds of either backbone."""

    metric: str
    a: str
    b: str
    value: float
    low: float
    high: float
    seeds_a: int
    seeds_b: int
    splits: int
    paired: bool
    df: float = math.nan

    @property
    def decided(self) -> bool:
        """Enough seeds of both backbones for an interval."""
        return min(self.seeds_a, self.seeds_b) >= MIN_SEEDS

    @property
    def excludes_zero(self) -> bool:
        return self.decided and (self.low > 0 or self.high < 0)


def compare(a: Winner, b: Winner, metric: str) -> Difference:
    """``a``'s winner minus ``b``'s in ``metric``; splits paired unless known to differ."""
    paired = _paired(a, b)
    xa, xb = a.scores(metric), b.scores(metric)
    if min(len(xa), len(xb)) >= MIN_SEEDS:
        value, low, high, df = difference_interval(xa, xb, paired=paired)
    else:
        value, low, high, df = float(xa.mean() - xb.mean()), math.nan, math.nan, math.nan
    splits = min(xa.shape[1], xb.shape[1])
    return Difference(
        metric, a.backbone, b.backbone, value, low, high, len(xa), len(xb), splits, paired, df
    )


def _paired(a: Winner, b: Winner) -> bool:
    """Same split count, and the same splits: one run, or split.json files that agree."""
    if a.n_splits != b.n_splits:
        return False
    if a.splits_key is not None and b.splits_key is not None:
        return a.splits_key == b.splits_key
    return a.run == b.run


# ------------------------------------------------------------------ verdict


@dataclass
class Verdict:
    a: str
    b: str
    text: str
    differences: dict[str, Difference] = field(default_factory=dict)  # metric -> difference


def verdicts(conf: Confirmation) -> list[Verdict]:
    """Two backbones: the first listed against the second. More: the best (highest mean
    validation) against each other. One backbone, or one with no scored seed: a line why."""
    if len(conf.backbones) < 2:
        only = ", ".join(conf.backbones) or "none"
        return [Verdict(only, "", f"No verdict: only one backbone was confirmed ({only}).")]
    scored = [b for b in conf.backbones if b in conf.winners and conf.winners[b].seeds]
    out = [Verdict(b, "", _why_unscored(conf, b)) for b in conf.backbones if b not in scored]
    if len(scored) < 2:
        return out
    if len(conf.backbones) == 2:
        pairs = [(scored[0], scored[1])]
    else:
        # the reference is chosen on validation, as everything else: never by a test score
        best = max(scored, key=lambda b: conf.winners[b].val_mean)
        pairs = [(best, b) for b in scored if b != best]
    for a, b in pairs:
        diffs = {m: compare(conf.winners[a], conf.winners[b], m) for m in VERDICT_METRICS}
        out.append(Verdict(a, b, verdict_text(diffs["mAP"], diffs["rank1"]), diffs))
    return out


def _why_unscored(conf: Confirmation, backbone: str) -> str:
    winner = conf.winners.get(backbone)
    if winner is None:
        why = f"no best/{backbone}/test_metrics.json"
    else:
        why = f"no seed of its winner {winner.config_id} has test scores"
        if winner.failed:
            why += f" ({len(winner.failed)} failed; e.g. {winner.failed[0]})"
    return f"No verdict for {backbone}: {why}."


def verdict_text(main: Difference, second: Difference | None = None) -> str:
    """One sentence on ``main`` (e.g. mAP), with ``second`` (e.g. Rank-1) beside it."""
    if not main.decided:
        return _undecided_text(main, second)
    label = LABELS.get(main.metric, main.metric)
    if main.excludes_zero:
        d = main if main.value > 0 else _flipped(main)
        head = (
            f"{d.a} is better than {d.b} by {d.value:.2f} {label} points "
            f"(95% CI {d.low:.2f} to {d.high:.2f})"
        )
    else:
        d = main
        head = (
            f"{d.a} and {d.b} are not distinguishable at this budget (difference {d.a} − "
            f"{d.b} {d.value:+.2f} {label} points, 95% CI {d.low:.2f} to {d.high:.2f})"
        )
    if second is not None:
        s = second if d.a == second.a else _flipped(second)
        head += (
            f"; {LABELS.get(s.metric, s.metric)} {s.value:+.2f} points "
            f"(95% CI {s.low:.2f} to {s.high:.2f})"
        )
    return f"{head}. {_basis(d)}"


def _undecided_text(d: Difference, second: Difference | None) -> str:
    """Below ``MIN_SEEDS`` seeds of a backbone: the difference, no interval, and why."""
    short = [(name, n) for name, n in ((d.a, d.seeds_a), (d.b, d.seeds_b)) if n < MIN_SEEDS]
    has = " and ".join(f"{name} has {_n(n, 'scoring seed')}" for name, n in short)
    more = " and ".join(f"{MIN_SEEDS - n} more of {name}" for name, n in short)
    text = (
        f"No verdict between {d.a} and {d.b}: {has}, and a verdict needs at least "
        f"{MIN_SEEDS} scoring seeds per backbone, because its interval rests on each "
        f"backbone's seed-to-seed spread (score {more}). Difference {d.a} − {d.b} "
        f"{d.value:+.2f} {LABELS.get(d.metric, d.metric)} points"
    )
    if second is not None:
        text += f", {LABELS.get(second.metric, second.metric)} {second.value:+.2f} points"
    return f"{text}; {_over(d)}."


def _flipped(d: Difference) -> Difference:
    return Difference(
        d.metric, d.b, d.a, -d.value, -d.high, -d.low, d.seeds_b, d.seeds_a, d.splits,
        d.paired, d.df,
    )  # fmt: skip


def _over(d: Difference) -> str:
    seeds = (
        f"{_n(d.seeds_a, 'seed')} of each"
        if d.seeds_a == d.seeds_b
        else f"{_n(d.seeds_a, 'seed')} of {d.a} and {d.seeds_b} of {d.b}"
    )
    how = "paired" if d.paired else "unpaired (not known to be the same)"
    return f"mean over {seeds} x {d.splits} {how} query/gallery splits"


def _basis(d: Difference) -> str:
    counts = " and ".join(map(str, sorted({d.seeds_a, d.seeds_b})))
    return (
        f"Test scores of the winners' scoring seeds, {_over(d)}. The interval is t-corrected "
        f"for {counts} seeds ({_dof(d)})."
    )


def _dof(d: Difference) -> str:
    """The degrees of freedom, and in one clause why these."""
    seeds = d.df == min(d.seeds_a, d.seeds_b) - 1
    fewest = "the smaller seed count" if seeds else "the split count"
    return (
        f"{_n(int(d.df), 'degree')} of freedom, one fewer than {fewest}: Welch's, from the "
        f"two backbones' seed spreads, would declare a winner in a tie too often at few seeds"
    )


def _n(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def winner_lines(conf: Confirmation) -> list[str]:
    """Per backbone: whether the confirmed winner is the single-seed (search) winner."""
    out = []
    for backbone in conf.backbones:
        w = conf.winners.get(backbone)
        if w is None:
            picked = conf.configs[(conf.configs["backbone"] == backbone) & conf.configs["winner"]]
            if not len(picked):
                out.append(f"{backbone}: no confirmed winner.")
                continue
            config, single = str(picked["config_id"].iloc[0]), _single_from_csv(conf, backbone)
        else:
            config, single = w.config_id, w.single_seed_winner
        if single is None:
            out.append(f"{backbone}: confirmed winner {config} (single-seed winner unknown).")
        elif single == config:
            out.append(f"{backbone}: confirmed winner {config} is also the single-seed winner.")
        else:
            out.append(
                f"{backbone}: confirmed winner {config} differs from the single-seed winner "
                f"{single}."
            )
    return out


def _single_from_csv(conf: Confirmation, backbone: str) -> str | None:
    rows = conf.configs[conf.configs["backbone"] == backbone]
    if "single_seed_rank" not in rows:
        return None
    first = rows[rows["single_seed_rank"] == 1]
    return str(first["config_id"].iloc[0]) if len(first) else None


# ------------------------------------------------------------------ tables


def winner_test(w: Winner | None) -> dict[str, float]:
    """Test metrics of a winner: mean and std over seeds x splits (%), and the counts."""
    out: dict[str, float] = {}
    for m in ("rank1", "rank5", "rank10", "mAP"):
        x = w.scores(m) if w is not None and w.seeds else np.empty((0, 0))
        finite = x[np.isfinite(x)]
        out[f"test_{m}"] = float(finite.mean()) if finite.size else math.nan
        out[f"test_{m}_std"] = float(finite.std()) if finite.size else math.nan
    out["test_seeds"] = len(w.seeds) if w is not None else 0
    out["test_splits"] = w.n_splits if w is not None else 0
    return out


def confirmed_table(conf: Confirmation) -> pd.DataFrame:
    """One row per confirmed configuration (machine names); the winners carry their test
    metrics, mean and std over seeds x splits."""
    rows = []
    for r in conf.configs.to_dict("records"):
        w = conf.winners.get(r["backbone"])
        is_winner = bool(r["winner"])
        test = winner_test(w) if is_winner else {}
        rows.append(
            {
                "backbone": r["backbone"],
                "config_id": r["config_id"],
                "runs": r.get("runs"),
                "val_mean": r.get("val_mean"),
                "val_std": r.get("val_std"),
                "search_val": r.get("search_val"),
                "single_seed_rank": r.get("single_seed_rank"),
                "confirmed_rank": r.get("confirmed_rank"),
                "winner": is_winner,
                **{k: test.get(k, math.nan) for k in TABLE_TEST},
            }
        )
    table = pd.DataFrame(rows, columns=[*TABLE_BASE, *TABLE_TEST])
    return table.map(lambda v: math.nan if v is pd.NA else v)


TABLE_BASE = [
    "backbone",
    "config_id",
    "runs",
    "val_mean",
    "val_std",
    "search_val",
    "single_seed_rank",
    "confirmed_rank",
    "winner",
]
TABLE_TEST = ["test_mAP", "test_mAP_std", "test_rank1", "test_rank1_std"]


def display_names(metric: str) -> dict[str, str]:
    """Readable headers, with units, for :func:`confirmed_table`."""
    return {
        "config_id": "configuration (search trial)",
        "runs": "seeds",
        "val_mean": f"{metric}, mean over seeds (%)",
        "val_std": f"{metric}, std over seeds (%)",
        "search_val": f"{metric}, search run (%)",
        "single_seed_rank": "rank by search run",
        "confirmed_rank": "rank confirmed",
        "winner": "winner",
        "test_mAP": "test mAP, winner (%)",
        "test_mAP_std": "test mAP std, seeds x splits (%)",
        "test_rank1": "test Rank-1, winner (%)",
        "test_rank1_std": "test Rank-1 std, seeds x splits (%)",
    }


# ------------------------------------------------------------------ summary


def summary_lines(run_dir: str | Path) -> list[str]:
    """What ``handreid-search`` prints at the end of a confirmed run: the confirmed table,
    single-seed vs confirmed winner per backbone, the verdict. [] without a confirmation."""
    conf = load_confirmation(run_dir)
    if conf is None:
        return []
    return [*table_lines(conf), *winner_lines(conf), *(v.text for v in verdicts(conf))]


def table_lines(conf: Confirmation) -> list[str]:
    metric = conf.metric
    lines = [
        f"Confirmation: {metric} (%) mean ± std over seeds; rank by the search's single run "
        "-> by the mean; * = winner"
    ]
    for backbone in conf.backbones:
        lines.append(f"  {backbone}")
        rows = conf.configs[conf.configs["backbone"] == backbone]
        for r in rows.to_dict("records"):
            mark = "*" if r["winner"] else " "
            lines.append(
                f"   {mark} {r['config_id']:<14} {_int(r.get('runs')):>2} runs  "
                f"{_pm(r.get('val_mean'), r.get('val_std'))}  "
                f"rank {_int(r.get('single_seed_rank'))} -> {_int(r.get('confirmed_rank'))}"
            )
        w = conf.winners.get(backbone)
        if w is not None and w.seeds:
            t = winner_test(w)
            lines.append(
                f"     winner {w.config_id} test: mAP {_pm(t['test_mAP'], t['test_mAP_std'])}, "
                f"Rank-1 {_pm(t['test_rank1'], t['test_rank1_std'])} "
                f"(%, over {_n(len(w.seeds), 'seed')} x {w.n_splits} splits)"
            )
    return lines


def _pm(mean: Any, std: Any) -> str:
    if not _finite(mean):
        return "—"
    return f"{float(mean):6.2f} ± {float(std):.2f}" if _finite(std) else f"{float(mean):6.2f}"


def _int(value: Any) -> str:
    return "—" if value is None or value is pd.NA or not _finite(value) else str(int(value))
