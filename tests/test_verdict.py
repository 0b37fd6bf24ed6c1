"""The confirmation stage in the analysis: the verdict's paired interval on constructed
scores with known answers, the search's end-of-run summary, the report's Confirmation
section, and confirmation runs kept out of the search's trials."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import figures
from analysis.confirm import (
    Confirmation,
    SeedScore,
    Winner,
    bootstrap_interval,
    compare,
    confirmed_table,
    difference_interval,
    load_confirmation,
    summary_lines,
    verdicts,
)
from analysis.importance import importance_table, rebuild_study
from analysis.load import load_run, read_trials_csv
from analysis.rank import comparison_table
from analysis.report import write_all
from bench.verdict_power import NULL_SETTINGS, Setting, better_rates
from tests.conftest import REPO
from tests.test_analysis import fabricate_run

N_PER_BACKBONE = 8  # per backbone: 6 complete, 2 pruned (fabricate_run's pattern)
TOP = 3  # configurations confirmed per backbone


# ------------------------------------------------------------------ fixtures


def scores(
    n_seeds: int,
    n_splits: int = 10,
    *,
    mean: float = 80.0,
    seed_sd: float = 1.0,
    split_effect: np.ndarray | None = None,
    noise_sd: float = 0.3,
    rng: np.random.Generator,
) -> np.ndarray:
    """(seeds, splits) test mAP: mean + seed effect + split effect + noise."""
    split = np.zeros(n_splits) if split_effect is None else split_effect
    seed = rng.normal(0, seed_sd, (n_seeds, 1))
    return mean + seed + split[None, :] + rng.normal(0, noise_sd, (n_seeds, n_splits))


def seed_docs(trial_ids, x: np.ndarray) -> list[dict]:
    """test_metrics.json seed entries for the score rows ``x`` (Rank-1 = mAP - 5)."""
    out = []
    for k, (tid, row) in enumerate(zip(trial_ids, x)):
        per_split = [
            {"rank1": v - 5, "rank5": v + 5, "rank10": v + 8, "mAP": v} for v in row.tolist()
        ]
        out.append(
            {
                "trial_id": tid,
                "train_seed": k,
                "val": 70.0,
                **{m: float(np.mean([p[m] for p in per_split])) for m in per_split[0]},
                "per_split": per_split,
            }
        )
    return out


def winner(
    backbone: str, x: np.ndarray, run: str = "r", rank1_below: float = 5.0, val: float = 70.0
) -> Winner:
    """A winner whose seeds score ``x`` (test mAP) and Rank-1 ``rank1_below`` lower, with
    mean validation ``val``."""
    seeds = [
        SeedScore(
            f"{backbone}{k}",
            k,
            70.0,
            {"mAP": row, "rank1": row - rank1_below, "rank5": row, "rank10": row},
        )
        for k, row in enumerate(np.asarray(x, dtype=float))
    ]
    return Winner(backbone, f"{backbone}-cfg", run, f"{backbone}-cfg", val, 1.0, seeds)


def confirmation(winners: dict[str, Winner]) -> Confirmation:
    configs = pd.DataFrame(
        [{"backbone": b, "config_id": w.config_id, "winner": True} for b, w in winners.items()]
    )
    return Confirmation("val_mAP", list(winners), configs, pd.DataFrame(), winners, ["r"])


def fabricate_confirmed_run(
    root: Path,
    name: str = "conf",
    *,
    seeds: int = 3,
    gap: float = 8.0,
    split_sd: float = 4.0,
    backbones: tuple[str, ...] = ("A", "B"),
    failed_seeds: dict[str, int] | None = None,
    rng_seed: int = 0,
    data: dict | None = None,
) -> Path:
    """fabricate_run's A and B, then a confirmation stage: the top 3 complete configurations
    per backbone retrained with ``seeds - 1`` more seeds (trial folders and trials.csv rows
    with role "confirm"), confirm.csv, and best/<backbone>/test_metrics.json with every
    seed of the winner on 10 splits. A's winner is its second search configuration (its
    extra seeds score higher), B's its first. B's test mAP is ``gap`` below A's; the
    splits share an effect of sd ``split_sd`` (the same splits for both backbones).
    ``failed_seeds``: backbone -> how many of its winner's seeds failed the test. ``data``:
    search.json's data block (fabricate_run's default: real images)."""
    run = fabricate_run(root, name, n_per_backbone=N_PER_BACKBONE, data=data)
    search = load_run(run).trials
    trials = pd.read_csv(run / "trials.csv", dtype={"trial_id": str})
    trials["best_val_mAP"] = trials["trial_id"].map(search.set_index("trial_id")["best_val_mAP"])
    trials["role"], trials["config_id"], trials["train_seed"] = "search", trials["trial_id"], 0
    rng = np.random.default_rng(rng_seed)
    split_effect = rng.normal(0, split_sd, 10)
    confirm_rows, configs = [], []
    for backbone in backbones:
        complete = search[(search.backbone == backbone) & (search.status == "complete")]
        top = complete.sort_values("best_val_mAP", ascending=False).head(TOP)
        best = float(top["best_val_mAP"].iloc[0])
        for rank, row in enumerate(top.itertuples(), start=1):
            own = float(row.best_val_mAP)
            boost = backbone == "A" and rank == 2
            values = [own] + [(2 * best - own + 1 if boost else own - 1)] * (seeds - 1)
            for k in range(1, seeds):
                tid = f"c{row.trial_id}s{k}"
                folder = run / f"trial_{tid}"
                folder.mkdir()
                params = json.loads((run / f"trial_{row.trial_id}" / "params.json").read_text())
                (folder / "params.json").write_text(json.dumps(params))
                lines = [
                    {"epoch": e, "val_mAP": values[k] - 4 + e, "epoch_seconds": 0.5,
                     "timestamp": 1_800_000_000 + e, "status": "done" if e == 4 else "running"}
                    for e in range(1, 5)
                ]  # fmt: skip
                (folder / "result.json").write_text("\n".join(map(json.dumps, lines)) + "\n")
                confirm_rows.append(
                    {"trial_id": tid, "backbone": backbone, "status": "complete",
                     "best_val_mAP": values[k], "role": "confirm",
                     "config_id": row.trial_id, "train_seed": k}
                )  # fmt: skip
            configs.append(
                {"backbone": backbone, "config_id": row.trial_id, "runs": seeds,
                 "val_mean": float(np.mean(values)), "val_std": float(np.std(values)),
                 "search_val": own, "single_seed_rank": rank}
            )  # fmt: skip
    table = pd.DataFrame(configs)
    table["confirmed_rank"] = table.groupby("backbone")["val_mean"].rank(ascending=False)
    table["confirmed_rank"] = table["confirmed_rank"].astype(int)
    table["winner"] = table["confirmed_rank"] == 1
    table.to_csv(run / "confirm.csv", index=False)
    pd.concat([trials, pd.DataFrame(confirm_rows)]).to_csv(run / "trials.csv", index=False)
    for backbone in backbones:
        win = table[(table.backbone == backbone) & table.winner].iloc[0]
        single = table[(table.backbone == backbone) & (table.single_seed_rank == 1)].iloc[0]
        cid = win["config_id"]
        ids = [cid] + [f"c{cid}s{k}" for k in range(1, seeds)]
        mean = 80.0 - gap * (backbone != "A")
        x = scores(seeds, mean=mean, split_effect=split_effect, rng=rng)
        docs = seed_docs(ids, x)
        for k in range((failed_seeds or {}).get(backbone, 0)):
            docs[k] = {"trial_id": ids[k], "train_seed": k, "error": "RuntimeError: CUDA OOM"}
        folder = run / "best" / backbone
        folder.mkdir(parents=True)
        doc = {
            "trial_id": cid, "config_id": cid, "confirmed": True,
            "single_seed_winner": single["config_id"],
            "same_as_single_seed": bool(single["config_id"] == cid),
            "val_mean": float(win["val_mean"]), "val_std": float(win["val_std"]),
            "seeds": docs, "mAP": float(x.mean()), "mAP_std": float(x.std()),
        }  # fmt: skip
        (folder / "test_metrics.json").write_text(json.dumps(doc, indent=1))
    return run


# ------------------------------------------------------------------ the interval


def test_a_clear_difference_excludes_zero_and_says_better():
    rng = np.random.default_rng(1)
    a, b = scores(5, mean=85.0, rng=rng), scores(5, mean=78.0, rng=rng)
    value, low, high, df = difference_interval(a, b)
    assert value == pytest.approx(a.mean() - b.mean())
    assert 0 < low < value < high and low < 7.0 < high and df == 4
    conf = confirmation({"A": winner("A", a), "B": winner("B", b, rank1_below=8.0)})
    (v,) = verdicts(conf)
    assert v.differences["mAP"].excludes_zero and v.differences["rank1"].excludes_zero
    assert v.text.startswith(f"A is better than B by {value:.2f} mAP points (95% CI {low:.2f}")
    rank1 = v.differences["rank1"]  # Rank-1 from its own scores: 3 points more apart
    assert rank1.value == pytest.approx(value + 3.0)
    said = f"Rank-1 {rank1.value:+.2f} points (95% CI {rank1.low:.2f} to {rank1.high:.2f})"
    assert said in v.text
    assert "5 seeds of each x 10 paired query/gallery splits" in v.text
    assert (
        "The interval is t-corrected for 5 seeds (4 degrees of freedom, one fewer than the "
        "smaller seed count: Welch's, from the two backbones' seed spreads, would declare a "
        "winner in a tie too often at few seeds)." in v.text
    )
    # the worse backbone listed first: the sentence still names the better one first
    (flipped,) = verdicts(confirmation({"B": winner("B", b), "A": winner("A", a)}))
    assert flipped.text.startswith(f"A is better than B by {value:.2f} mAP points")


def test_identical_distributions_are_not_distinguishable():
    rng = np.random.default_rng(2)
    a, b = scores(10, mean=80.0, rng=rng), scores(10, mean=80.0, rng=rng)
    _, low, high, _ = difference_interval(a, b)
    assert low < 0 < high
    (v,) = verdicts(confirmation({"A": winner("A", a), "B": winner("B", b)}))
    assert not v.differences["mAP"].excludes_zero
    assert v.text.startswith("A and B are not distinguishable at this budget (difference A − B")
    assert "better" not in v.text


def test_shared_split_noise_cancels_when_splits_are_paired():
    """Splits that differ a lot in difficulty (sd 10), the same for both backbones, and a
    true gap of 2: pairing the splits keeps the interval narrow and off zero; taking each
    backbone's splits apart would make it wide and cover zero."""
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 10.0, 10)
    a = scores(4, mean=82.0, seed_sd=0.2, split_effect=shared, noise_sd=0.2, rng=rng)
    b = scores(4, mean=80.0, seed_sd=0.2, split_effect=shared, noise_sd=0.2, rng=rng)
    _, low, high, _ = difference_interval(a, b, paired=True)
    _, ulow, uhigh, _ = difference_interval(a, b, paired=False)
    assert 0 < low and high - low < 1.0
    assert ulow < 0 < uhigh and uhigh - ulow > 10 * (high - low)
    (v,) = verdicts(confirmation({"A": winner("A", a), "B": winner("B", b)}))
    assert v.differences["mAP"].paired and "A is better than B" in v.text
    # the verdict pairs the splits: its interval is the paired one
    assert (v.differences["mAP"].low, v.differences["mAP"].high) == (low, high)


def test_the_interval_is_the_t_interval_of_its_parts():
    """Seeds vary, splits not: the t interval of the seed means, with one fewer degrees of
    freedom than the fewer seeds. Splits vary, seeds not: the t interval of the per-split
    differences (their shared part cancels)."""
    rng = np.random.default_rng(5)
    a = 80.0 + np.repeat(rng.normal(0, 4.0, (5, 1)), 10, axis=1)
    b = np.full((7, 10), 70.0)
    value, low, high, df = difference_interval(a, b)
    assert df == 4 and value == pytest.approx(10.0 + a[:, 0].mean() - 80.0)
    sd = a[:, 0].std(ddof=1) / np.sqrt(5)
    assert high - low == pytest.approx(2 * stats.t.ppf(0.975, 4) * sd, rel=1e-9)
    shared, own = rng.normal(0, 5.0, 10), rng.normal(0, 1.0, 10)
    a, b = np.tile(80.0 + shared + own, (3, 1)), np.tile(78.0 + shared, (3, 1))
    _, low, high, df = difference_interval(a, b)
    sd = own.std(ddof=1) / np.sqrt(10)
    assert df == 2 and high - low == pytest.approx(2 * stats.t.ppf(0.975, 2) * sd, rel=1e-9)


def test_a_batch_of_score_arrays_gives_each_its_own_interval():
    """The null simulations run the shipped interval on a batch at once: the same numbers
    as one call per simulation."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(80, 3, (6, 3, 10)), rng.normal(80, 3, (6, 5, 10))
    batch = difference_interval(a, b)
    for k in range(6):
        one = difference_interval(a[k], b[k])
        assert [float(x[k]) for x in batch[:3]] == pytest.approx(list(one[:3]), rel=1e-12)
        assert one.df == batch.df == 2
    with pytest.raises(ValueError, match="at least 2 seeds of each backbone"):
        difference_interval(a[:, :1], b)
    # the former name, for its callers (bench.chain): the same interval, nothing drawn
    assert bootstrap_interval(a[0], b[0], replicates=2000, seed=3) == difference_interval(
        a[0], b[0]
    )


def test_a_tie_is_called_better_at_most_2_5_percent_per_side():
    """Issue 23: under a true tie, "A is better" and "B is better" each at most 2.5% of the
    time, for equal (3, 3) and unequal (5, 2) seed sds, split sd 1 and 2 on shared splits,
    2-5 seeds per backbone and 2 against 5 (bench.verdict_power's settings, through the
    shipped interval). 4,000 seeded simulations per setting: the binomial standard error
    at 2.5% is 0.25 points, so the bound checked is 3.0% (two of them above); the shipped
    interval's worst side measured 1.6% with 20,000 (BENCHMARKS.md), and Welch's degrees
    of freedom reach 5.5% (2 seeds of sd 5 against 5 of sd 2), which this catches."""
    rates = {}
    for k, setting in enumerate(NULL_SETTINGS):
        rates[setting] = better_rates(setting, 4000, np.random.default_rng(100 + k))
    worst = {s: max(r) for s, r in rates.items() if max(r) > 0.03}
    assert not worst, worst
    # not vacuous: with 5 seeds of each the interval does say "better" now and then
    assert max(max(r) for s, r in rates.items() if s.seeds == (5, 5)) > 0.005


def test_a_real_gap_is_found():
    """10 points apart, seed sd 3, 5 seeds each: the verdict says so nearly always."""
    hit, wrong = better_rates(Setting((5, 5), gap=10.0), 2000, np.random.default_rng(9))
    assert hit > 0.9 and wrong == 0


def test_the_power_command_runs(tmp_path, monkeypatch, capsys):
    from bench import verdict_power

    monkeypatch.setattr(verdict_power, "RESULTS", tmp_path)
    assert verdict_power.main(["--sims", "200"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n| 0 | ") == len(NULL_SETTINGS) and "\n| 5 | 3 / 3 | 3 / 3 | 1.5 |" in out
    assert "verdict_power: tie called better at most " in out
    doc = json.loads((tmp_path / "verdict_power.json").read_text())
    assert len(doc["rows"]) == len(NULL_SETTINGS) + len(verdict_power.POWER_SETTINGS)


def test_one_seed_of_a_backbone_never_says_better():
    """Issue 23: with one scoring seed per backbone the verdict said "better" under a true
    tie ~87% of the time (seed sd 3: the interval saw the splits only). Below 2 scoring
    seeds of a backbone it states no "better" and says how many it needs."""
    rng = np.random.default_rng(6)
    said = []
    for _ in range(200):
        shared = rng.normal(0, 1.5, 10)
        a, b = (scores(1, seed_sd=3.0, split_effect=shared, rng=rng) for _ in range(2))
        (v,) = verdicts(confirmation({"A": winner("A", a), "B": winner("B", b)}))
        said.append(v.text)
    assert not [t for t in said if "better" in t], said[:3]
    assert said[0].startswith(
        "No verdict between A and B: A has 1 scoring seed and B has 1 scoring seed, and a "
        "verdict needs at least 2 scoring seeds per backbone, because its interval rests on "
        "each backbone's seed-to-seed spread (score 1 more of A and 1 more of B). "
        "Difference A − B "
    )
    assert "mean over 1 seed of each x 10 paired query/gallery splits." in said[0]


def test_one_seed_against_three_says_which_needs_more():
    rng = np.random.default_rng(7)
    a = scores(1, mean=95.0, rng=rng)  # far apart, still no "better" with one seed
    b = scores(3, mean=70.0, rng=rng)
    (v,) = verdicts(confirmation({"A": winner("A", a), "B": winner("B", b)}))
    d = v.differences["mAP"]
    assert not d.decided and not d.excludes_zero and np.isnan([d.low, d.high, d.df]).all()
    assert d.value == pytest.approx(a.mean() - b.mean())
    assert v.text.startswith("No verdict between A and B: A has 1 scoring seed, and a verdict")
    assert "(score 1 more of A)" in v.text and "better" not in v.text
    assert f"Difference A − B {d.value:+.2f} mAP points, Rank-1 " in v.text
    assert "mean over 1 seed of A and 3 of B x 10 paired" in v.text


def test_no_verdict_without_a_scored_seed_or_a_second_backbone(tmp_path):
    rng = np.random.default_rng(7)
    a = winner("A", scores(3, rng=rng))
    empty = Winner("B", "B-cfg", "r", "B-cfg", 70.0, 1.0, [], ["trial x (train seed 0): OOM"])
    (v,) = verdicts(confirmation({"A": a, "B": empty}))
    assert v.text == (
        "No verdict for B: no seed of its winner B-cfg has test scores (1 failed; e.g. "
        "trial x (train seed 0): OOM)."
    )
    (v,) = verdicts(confirmation({"A": a}))
    assert v.text == "No verdict: only one backbone was confirmed (A)."
    # on files: every seed of B's winner failed, or B's test_metrics.json is missing
    run = fabricate_confirmed_run(tmp_path, "failed", failed_seeds={"B": 3})
    texts = [v.text for v in verdicts(load_confirmation(run))]
    assert len(texts) == 1 and texts[0].startswith("No verdict for B: no seed of its winner")
    assert "RuntimeError: CUDA OOM" in texts[0]
    (run / "best" / "B" / "test_metrics.json").unlink()
    assert [v.text for v in verdicts(load_confirmation(run))] == [
        "No verdict for B: no best/B/test_metrics.json."
    ]


def test_more_than_two_backbones_compare_the_best_with_each_other():
    rng = np.random.default_rng(8)
    shared = rng.normal(0, 2.0, 10)
    x = scores(3, mean=86.0, split_effect=shared, rng=rng)
    a = scores(3, mean=78.0, split_effect=shared, rng=rng)
    # C: B's seeds in another order, 0.1 lower: B is the best (on validation: the reference
    # is never chosen by a test score), C not told apart from it
    ws = {
        "A": winner("A", a, val=60.0),
        "B": winner("B", x, val=62.0),
        "C": winner("C", x[::-1] - 0.1, val=61.0),
    }
    out = verdicts(confirmation(ws))
    assert [(v.a, v.b) for v in out] == [("B", "A"), ("B", "C")]
    assert out[0].text.startswith("B is better than A")
    assert "B and C are not distinguishable" in out[1].text


def test_a_failed_seed_is_skipped(tmp_path):
    run = fabricate_confirmed_run(tmp_path, failed_seeds={"B": 1})
    conf = load_confirmation(run)
    assert len(conf.winners["A"].seeds) == 3 and len(conf.winners["B"].seeds) == 2
    assert conf.winners["B"].failed == [
        f"trial {conf.winners['B'].config_id} (train seed 0): RuntimeError: CUDA OOM"
    ]
    (v,) = verdicts(conf)
    assert "3 seeds of A and 2 of B x 10 paired" in v.text


# ------------------------------------------------------------------ files and summary


def test_summary_lines_on_a_confirmed_run(tmp_path):
    run = fabricate_confirmed_run(tmp_path)
    conf = load_confirmation(run)
    lines = summary_lines(run)
    text = "\n".join(lines)
    assert lines[0].startswith("Confirmation: val_mAP (%) mean ± std over seeds")
    configs = conf.configs
    for r in configs.itertuples():
        line = next(x for x in lines if f" {r.config_id} " in x and "runs" in x)
        assert line.lstrip().startswith("*" if r.winner else r.config_id)
        assert f"{r.val_mean:6.2f} ± {r.val_std:.2f}" in line
        assert f"rank {r.single_seed_rank} -> {r.confirmed_rank}" in line
    a, b = conf.winners["A"], conf.winners["B"]
    assert a.config_id != a.single_seed_winner and b.config_id == b.single_seed_winner
    assert f"A: confirmed winner {a.config_id} differs from the single-seed winner " in text
    assert f"B: confirmed winner {b.config_id} is also the single-seed winner." in text
    x = a.scores("mAP")
    assert f"winner {a.config_id} test: mAP {x.mean():6.2f} ± {x.std():.2f}" in text
    assert "(%, over 3 seeds x 10 splits)" in text
    assert lines[-1].startswith("A is better than B by ")
    # A's winner's own seed values in trials.csv: the search run and two confirmation runs
    seeds = conf.seed_values[conf.seed_values.config_id == a.config_id]
    assert sorted(seeds["role"]) == ["confirm", "confirm", "search"]
    assert summary_lines(fabricate_run(tmp_path, "plain")) == []


def test_summary_lines_need_neither_ray_nor_optuna(tmp_path):
    run = fabricate_confirmed_run(tmp_path)
    code = f"""
import sys
sys.modules["ray"] = None
sys.modules["optuna"] = None  # importing either would fail
from analysis.confirm import summary_lines
lines = summary_lines({str(run)!r})
assert lines and " is better than " in lines[-1], lines
loaded = [m for m in ("torch", "plotly", "handreid.train", "search") if m in sys.modules]
assert not loaded, loaded
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_old_trials_csv_rows_are_search_rows(tmp_path):
    run = fabricate_run(tmp_path, n_per_backbone=4)  # trials.csv without the new columns
    rows = read_trials_csv(run / "trials.csv")
    assert {r["role"] for r in rows.values()} == {"search"}
    assert all(r["config_id"] == tid for tid, r in rows.items())
    assert load_confirmation(run) is None


def test_confirmation_runs_are_not_search_trials(tmp_path):
    plain = load_run(fabricate_run(tmp_path, "plain", n_per_backbone=N_PER_BACKBONE))
    data = load_run(fabricate_confirmed_run(tmp_path))
    assert (run_folders := len(list((tmp_path / "conf").glob("trial_*")))) > 2 * N_PER_BACKBONE
    assert data.confirm_runs == run_folders - 2 * N_PER_BACKBONE == 2 * TOP * 2
    assert len(data.trials) == 2 * N_PER_BACKBONE
    assert not data.trials["trial_id"].str.startswith("c").any()
    assert not data.curves["trial_id"].str.startswith("c").any()
    assert data.trials["status"].value_counts().to_dict() == {"complete": 12, "pruned": 4}
    assert len(rebuild_study(data, by_key=False).trials) == 2 * N_PER_BACKBONE  # history
    table, _ = importance_table(data)
    assert set(table["n_trials"]) == set(importance_table(plain)[0]["n_trials"]) == {6}
    ours = comparison_table(data, load_confirmation(tmp_path / "conf"))
    ours = ours[~ours["reference"]]
    assert list(ours["trials"]) == [N_PER_BACKBONE] * 2  # each backbone's confirmed winner
    assert ours["system"].str.contains("confirmed winner").all()


# ------------------------------------------------------------------ report


def test_confirmed_table_and_figure(tmp_path):
    conf = load_confirmation(fabricate_confirmed_run(tmp_path))
    table = confirmed_table(conf)
    assert list(table["backbone"]) == ["A"] * 3 + ["B"] * 3
    assert list(table["confirmed_rank"]) == [1, 2, 3] * 2
    winners = table[table["winner"]]
    assert len(winners) == 2 and winners["test_mAP"].notna().all()
    assert table[~table["winner"]]["test_mAP"].isna().all()
    fig = figures.confirmation_figure(conf)
    drawn = [t for t in fig.data if t.x[0] is not None]  # the rest: legend entries
    dots = [t for t in drawn if t.marker.symbol != "line-ew-open"]
    means = [t for t in drawn if t.marker.symbol == "line-ew-open"]
    left = [t for t in dots if t.xaxis == "x"]
    assert [len(t.y) for t in left] == [3] * 6  # each configuration: 3 seeds
    assert [len(t.y) for t in dots if t.xaxis == "x2"] == [3, 3]  # each winner: 3 seeds
    assert len(means) == 6 + 2
    assert any("★" in t.x[0] for t in left)


def test_report_and_comparison_md_hold_the_confirmation(tmp_path):
    run = fabricate_confirmed_run(tmp_path)
    result = write_all([run], tmp_path / "out")
    out = tmp_path / "out"
    page = (out / "report.html").read_text()
    conf = load_confirmation(run)
    (verdict,) = verdicts(conf)
    section = page.split("<h2>Confirmation</h2>", 1)[1].split("</section>", 1)[0]
    assert 'id="fig-confirmation"' in section and verdict.text.split(" (")[0] in section
    assert "differs from the single-seed winner" in section
    assert "test mAP, winner (%)" in section and "val_mAP, mean over seeds (%)" in section
    cells = [c.split("</td>")[0] for c in section.split("<td>")[1:]]
    assert not {"True", "False", "None", "nan", "<NA>"} & set(cells)
    assert "yes" in cells and "—" in cells
    assert "16 trials (12 complete, 4 pruned)" in page
    assert "fresh training seeds of each backbone's confirmed winner" in page
    md = (out / "comparison.md").read_text()
    confirm_md = md.split("## Confirmation", 1)[1]
    assert verdict.text in confirm_md and "| backbone | configuration (search trial) |" in md
    assert md.count("| handreid-search ") == 2 and "| handreid-search A: confirmed winner" in md
    assert out / "confirmed.csv" in result.files
    # without a confirmation stage: no section, one line saying so
    plain = write_all([fabricate_run(tmp_path, "plain", n_per_backbone=4)], tmp_path / "p")
    page = (plain.out / "report.html").read_text()
    assert "<h2>Confirmation</h2>" not in page and "No confirmation stage" in page
    assert "## Confirmation" not in (plain.out / "comparison.md").read_text()


def test_winners_compare_across_two_run_directories(tmp_path):
    """A ViT and an RN50 search in separate run dirs: one verdict over both; without split
    files proving the splits are the same, they are resampled apart (and said so)."""
    a = fabricate_confirmed_run(tmp_path, "a", backbones=("A",))
    b = fabricate_confirmed_run(tmp_path, "b", backbones=("B",), rng_seed=0)
    from analysis.confirm import load_confirmations

    one = load_confirmation(a)
    assert [v.text for v in verdicts(one)] == ["No verdict: only one backbone was confirmed (A)."]
    both = load_confirmations([a, b])
    assert both.backbones == ["A", "B"] and both.runs == ["a", "b"]
    (v,) = verdicts(both)
    assert not v.differences["mAP"].paired and "unpaired" in v.text
    split = {"test_splits": [{"query": [{"image": "/x/1.jpg", "id": "7"}], "gallery": []}]}
    for run, backbone in ((a, "A"), (b, "B")):
        (run / "best" / backbone / "split.json").write_text(json.dumps(split))
    (v,) = verdicts(load_confirmations([a, b]))
    assert v.differences["mAP"].paired
    assert compare(both.winners["A"], both.winners["B"], "mAP").value == pytest.approx(8, abs=3)


def test_an_old_format_test_file_is_one_seed(tmp_path):
    """A winner scored without the seeds list (the format before confirmation): its
    top-level per-split scores are one seed."""
    run = fabricate_confirmed_run(tmp_path)
    path = run / "best" / "B" / "test_metrics.json"
    doc = json.loads(path.read_text())
    first = doc["seeds"][0]
    path.write_text(json.dumps({"trial_id": first["trial_id"], "confirmed": False, **first}))
    conf = load_confirmation(run)
    assert len(conf.winners["B"].seeds) == 1 and conf.winners["B"].config_id == doc["config_id"]
    (v,) = verdicts(conf)
    assert "3 seeds of A and 1 of B" in v.text and "B has 1 scoring seed" in v.text
    assert "better" not in v.text


def test_the_selection_runs_beside_the_seeds_are_not_scored(tmp_path):
    """test_metrics.json may list the runs that chose the winner under ``selection``
    beside the scored ``seeds``: the verdict and the tables read ``seeds`` only."""
    run = fabricate_confirmed_run(tmp_path)
    before = [v.text for v in verdicts(load_confirmation(run))]
    path = run / "best" / "A" / "test_metrics.json"
    doc = json.loads(path.read_text())
    doc["selection"] = [{**s, "mAP": 0.0, "per_split": [{"mAP": 0.0}] * 10} for s in doc["seeds"]]
    path.write_text(json.dumps(doc))
    conf = load_confirmation(run)
    assert len(conf.winners["A"].seeds) == 3 and conf.winners["A"].scores("mAP").min() > 50
    assert [v.text for v in verdicts(conf)] == before
