"""The confirmation stage: the search's top configurations trained again with more seeds,
the confirmed winner trained with fresh seeds that alone are scored, a killed confirmation
resumed, and ``--confirm RUN_DIR`` confirming (and extending) a finished search."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tests.conftest import (
    FINAL,
    resume_search,
    search_command,
    sigkill_search_when,
    small_space,
    trial_results,
)

RN_ONLY = {"optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def search(args: list[str], capsys) -> tuple[int, str, str]:
    from search.cli import main

    code = main([*args, "--quiet"])
    out = capsys.readouterr()
    return code, out.out, out.err


def read_trials(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "trials.csv", dtype={"trial_id": str, "config_id": str})


def read_confirm(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "confirm.csv", dtype={"config_id": str})


def study_attrs(run_dir: Path, name: str) -> dict[str, dict]:
    study = optuna.load_study(
        study_name=f"handreid-{name}", storage=f"sqlite:///{run_dir / 'study.db'}"
    )
    return {t.user_attrs["ray_trial_id"]: t.user_attrs for t in study.trials}


def no_rung(epochs: int) -> dict:
    """ASHA settings without a rung before ``epochs``: no trial is pruned."""
    return {"type": "asha", "grace_period": epochs, "reduction_factor": 2, "max_epochs": epochs}


def histories(run_dir: Path) -> dict[str, str]:
    """Each confirmation run's history.csv in its state folder (named after the run): a run
    trained again rewrites it, with other epoch timings."""
    return {
        p.parent.name: p.read_text() for p in (run_dir / "scratch").glob("confirm_*/history.csv")
    }


def check_runs(run_dir: Path, configs: int, seeds: int) -> pd.DataFrame:
    """Every (configuration, seed) once in trials.csv, complete, in a result folder of its
    own; returns the confirmation rows."""
    table = read_trials(run_dir)
    runs = table[table["role"] == "confirm"]
    pairs = list(zip(runs["config_id"], runs["train_seed"]))
    assert len(pairs) == len(set(pairs)) == configs * seeds, runs
    assert set(runs["train_seed"]) == set(range(1, seeds + 1))
    assert set(runs["config_id"]) <= set(table.loc[table["role"] == "search", "trial_id"])
    assert set(runs["status"]) == {"complete"}, runs[["trial_id", "status", "fail_reason"]]
    folders = {p.name for p in run_dir.glob("confirm-*/trial_*") if (p / "result.json").is_file()}
    extra = table[table["role"] == "score"]
    assert folders == {f"trial_{t}" for t in [*runs["trial_id"], *extra["trial_id"]]}
    return runs


def check_scoring(run_dir: Path, backbone: str, seeds: int) -> dict:
    """best/<backbone>/test_metrics.json: the scored runs are the winner's fresh seeds, and
    the runs that chose it are selection evidence (validation only); returns the file."""
    table, confirm = read_trials(run_dir), read_confirm(run_dir)
    winner = confirm[(confirm["backbone"] == backbone) & confirm["winner"]]["config_id"].iloc[0]
    test = json.loads((run_dir / "best" / backbone / "test_metrics.json").read_text())
    assert test["config_id"] == winner and test["scored_on"] == "fresh seeds"
    chose = table[(table["config_id"] == winner) & table["role"].isin(["search", "confirm"])]
    assert sorted(s["train_seed"] for s in test["selection"]) == sorted(chose["train_seed"])
    assert [s["train_seed"] for s in test["seeds"]] == [1000 + i for i in range(1, seeds + 1)]
    fresh = table[(table["role"] == "score") & (table["config_id"] == winner)]
    assert {s["trial_id"] for s in test["seeds"]} == set(fresh["trial_id"])
    assert not set(fresh["train_seed"]) & set(chose["train_seed"])  # disjoint seeds
    scored = table.dropna(subset=["test_mAP"])
    assert set(scored["role"]) <= {"score"}  # a run that chose is never scored
    return test


# ------------------------------------------------------------------ a search, confirmed


@pytest.mark.slow
def test_a_search_confirms_its_top_configurations_and_scores_the_winners_seeds(
    ray_local, tmp_path, capsys
):
    space = small_space(
        tmp_path,
        num_samples=3,
        max_epochs=2,
        start_points=[
            {"model.backbone": "tiny-vit", "optim.lr_visual": 3e-3},
            {"model.backbone": "tiny-rn", "optim.lr_visual": 2e-3},
            {"model.backbone": "tiny-vit", "optim.lr_visual": 1e-3},
        ],
        # no rung: every search trial completes, so each is a candidate (only complete
        # trials are confirmed)
        tune={"confirm": {"top_k": 2, "seeds": 2, "score_seeds": 2}, "scheduler": no_rung(2)},
    )
    args = ["--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "a"]
    code, out, err = search(args, capsys)
    assert code == 0, err
    run_dir = tmp_path / "runs" / "a"

    # trials.csv: the search's trials, and 2 seeds of the top 2 (vit) / 1 (rn) configurations
    table = read_trials(run_dir)
    search_rows = table[table["role"] == "search"]
    assert len(search_rows) == 3 and (search_rows["config_id"] == search_rows["trial_id"]).all()
    assert set(search_rows["train_seed"]) == {0}
    runs = check_runs(run_dir, configs=3, seeds=2)
    for row in runs.to_dict("records"):  # the configuration repeated: parameters, backbone
        own = search_rows[search_rows["trial_id"] == row["config_id"]].iloc[0]
        assert row["backbone"] == own["backbone"]
        assert math.isclose(row["optim.lr_visual"], own["optim.lr_visual"])
        assert row["epochs"] == 2 and row["trial_seconds"] > 0

    # confirm.csv: mean and population std over the search run and its seeds
    confirm = read_confirm(run_dir)
    assert sorted(confirm["backbone"]) == ["tiny-rn", "tiny-vit", "tiny-vit"]
    for row in confirm.itertuples():
        values = [search_rows.set_index("trial_id").loc[row.config_id, "best_val_mAP"]]
        values += list(runs.loc[runs["config_id"] == row.config_id, "best_val_mAP"])
        assert row.runs == 3 and row.search_val == values[0]
        assert math.isclose(row.val_mean, pd.Series(values).mean())
        assert math.isclose(row.val_std, pd.Series(values).std(ddof=0))
    vit = confirm[confirm["backbone"] == "tiny-vit"]
    assert sorted(vit["single_seed_rank"]) == sorted(vit["confirmed_rank"]) == [1, 2]
    assert vit.loc[vit["val_mean"].idxmax(), "winner"] and vit["winner"].sum() == 1
    assert vit.loc[vit["search_val"].idxmax(), "single_seed_rank"] == 1

    # best/<backbone>/: the confirmed winner, its 2 fresh seeds scored on the 10 test splits
    scored = table.dropna(subset=["test_mAP"])
    for w in confirm[confirm["winner"]].itertuples():
        best = run_dir / "best" / w.backbone
        assert (best / "config.yaml").is_file() and (best / "best.pt").is_file()
        test = json.loads((best / "test_metrics.json").read_text())
        assert test["confirmed"] is True
        assert test["trial_id"] == test["config_id"] == w.config_id
        single = confirm[(confirm["backbone"] == w.backbone) & (confirm["single_seed_rank"] == 1)]
        assert test["single_seed_winner"] == single["config_id"].iloc[0]
        assert test["same_as_single_seed"] == (test["single_seed_winner"] == w.config_id)
        assert math.isclose(test["val_mean"], w.val_mean)
        check_scoring(run_dir, w.backbone, seeds=2)
        seeds = test["seeds"]
        own_runs = set(runs.loc[runs["config_id"] == w.config_id, "trial_id"])
        assert {s["trial_id"] for s in test["selection"]} == own_runs | {w.config_id}
        all_splits = []
        for s in seeds:
            assert len(s["per_split"]) == 10 and set(s["per_split"][0]) == {
                "rank1",
                "rank5",
                "rank10",
                "mAP",
            }
            assert math.isclose(s["mAP"], sum(p["mAP"] for p in s["per_split"]) / 10)
            row = table[table["trial_id"] == s["trial_id"]].iloc[0]
            assert math.isclose(s["val"], row["best_val_mAP"])
            assert math.isclose(row["test_mAP"], s["mAP"])  # trials.csv: each scored run
            all_splits += [p["mAP"] for p in s["per_split"]]
        assert math.isclose(test["mAP"], pd.Series(all_splits).mean())
        assert math.isclose(test["mAP_std"], pd.Series(all_splits).std(ddof=0))
    winners = confirm.loc[confirm["winner"], "config_id"]
    fresh = table[table["config_id"].isin(winners) & (table["role"] == "score")]
    assert set(scored["trial_id"]) == set(fresh["trial_id"]) and len(fresh) == 4

    # the study: user attributes on the confirmed configurations' trials, no new trials; a
    # derived study per backbone for the dashboard
    names = optuna.get_all_study_names(f"sqlite:///{run_dir / 'study.db'}")
    assert sorted(names) == ["handreid-a", "handreid-a [tiny-rn]", "handreid-a [tiny-vit]"]
    attrs = study_attrs(run_dir, "a")
    assert set(attrs) == set(search_rows["trial_id"])
    for row in confirm.itertuples():
        assert math.isclose(attrs[row.config_id]["confirmed_val_mean"], row.val_mean)
        assert math.isclose(attrs[row.config_id]["confirmed_val_std"], row.val_std)
        assert attrs[row.config_id]["confirmed_runs"] == 3

    # the terminal: each backbone's confirmed winner, then the confirmation summary
    lines = out.splitlines()
    head = lines.index(next(x for x in lines if x.startswith("confirmed winner per backbone")))
    shown = " ".join(lines[head + 2 : head + 4])
    assert all(config in shown for config in winners), lines[head : head + 4]
    assert "confirmation runs: 6 (6 complete)" in out
    assert "scoring runs: 4 (4 complete)" in out
    assert any(line.startswith("Confirmation: ") for line in lines), out


# ------------------------------------------------------------------ killed, resumed


@pytest.mark.slow
def test_a_driver_killed_during_confirmation_resumes_losing_and_repeating_no_run(tmp_path):
    space = small_space(
        tmp_path,
        num_samples=2,
        max_epochs=3,
        fixed={"data.synth.ids": 16, "model.backbone": "tiny-rn"},
        search=RN_ONLY,
        start_points=[{"optim.lr_visual": 3e-3}, {"optim.lr_visual": 1e-3}],
        tune={"confirm": {"top_k": 2, "seeds": 2, "score_seeds": 1}, "scheduler": no_rung(3)},
    )
    cmd = search_command(space, tmp_path / "runs", "k")
    run_dir = tmp_path / "runs" / "k"

    def going(res):  # a confirmation run finished, another one under way
        done = [r for r in res.values() if r and r[-1]["status"] in FINAL]
        return done and len(res) > len(done)

    before = sigkill_search_when(cmd, run_dir / "confirm-1", going, timeout=240)
    finished = {t for t, r in before.items() if r and r[-1]["status"] in FINAL}
    trained = histories(run_dir)
    assert not (run_dir / "trials.csv").exists() and not (run_dir / "confirm.csv").exists()

    resume_search(cmd, timeout=300)
    runs = check_runs(run_dir, configs=2, seeds=2)
    after = trial_results(run_dir / "confirm-1")
    finished_keys = {
        f"confirm_{r.config_id}_seed{r.train_seed}"
        for r in runs.itertuples()
        if f"trial_{r.trial_id}" in finished
    }
    assert finished_keys, "the runs finished at the kill are in trials.csv under their ids"
    now = histories(run_dir)
    for key in finished_keys:  # none trained again: its history is as it was at the kill
        assert now[key] == trained[key], key
    for trial in finished:  # nor reported again, beyond a replay of its last epoch
        rows = before[trial]
        assert len(rows) <= len(after[trial]) <= len(rows) + 1, trial
    for trial, rows in after.items():  # no epoch lost
        assert {r["epoch"] for r in rows} == {1, 2, 3}, trial
    confirm = read_confirm(run_dir)
    assert len(confirm) == 2 and set(confirm["runs"]) == {3}
    check_scoring(run_dir, "tiny-rn", seeds=1)


# ------------------------------------------------------------------ --confirm RUN_DIR


@pytest.mark.slow
def test_confirm_a_finished_search_then_extend_it_without_rerunning(ray_local, tmp_path, capsys):
    space = small_space(
        tmp_path,
        num_samples=2,
        max_epochs=2,
        fixed={"data.synth.ids": 16, "model.backbone": "tiny-rn"},
        search=RN_ONLY,
        tune={"confirm": {"top_k": 1, "seeds": 3, "score_seeds": 1}},
    )
    storage = tmp_path / "runs"
    args = ["--space", str(space), "--storage", str(storage), "--name", "c"]
    code, _, err = search([*args, "--confirm-seeds", "0"], capsys)
    assert code == 0, err
    run_dir = storage / "c"
    assert not (run_dir / "confirm.csv").exists()
    assert set(read_trials(run_dir)["role"]) == {"search"}
    off = json.loads((run_dir / "best" / "tiny-rn" / "test_metrics.json").read_text())
    assert off["confirmed"] is False and len(off["per_split"]) == 10

    code, _, err = search(["--confirm", str(run_dir), "--confirm-seeds", "1"], capsys)
    assert code == 0, err
    first = check_runs(run_dir, configs=1, seeds=1)
    results, trained = trial_results(run_dir / "confirm-1"), histories(run_dir)
    assert read_confirm(run_dir)["runs"].tolist() == [2]

    code, out, err = search(["--confirm", str(run_dir)], capsys)  # the space's 3 seeds
    assert code == 0, err
    runs = check_runs(run_dir, configs=1, seeds=3)
    assert first["trial_id"].iloc[0] in set(runs["trial_id"])  # seed 1 kept, not rerun
    assert trial_results(run_dir / "confirm-1") == results
    assert histories(run_dir)[f"confirm_{first['config_id'].iloc[0]}_seed1"] == next(
        iter(trained.values())
    )
    plan = json.loads((run_dir / "confirm-3" / "plan.json").read_text())  # 2: scoring
    assert [r["train_seed"] for r in plan["runs"]] == [2, 3]  # only the missing seeds
    assert read_confirm(run_dir)["runs"].tolist() == [4]
    test = check_scoring(run_dir, "tiny-rn", seeds=1)
    assert test["confirmed"] is True and len(test["selection"]) == 4
    assert "confirmation runs: 3 (3 complete)" in out and "scoring runs: 1" in out
    assert len(study_attrs(run_dir, "c")) == 2  # the study got no trial of its own for them

    def runs_trained() -> dict[str, str]:  # a run trained again rewrites its history
        scratch = run_dir / "scratch"
        return {p.parent.name: p.read_text() for p in scratch.glob("*_seed*/history.csv")}

    trained = runs_trained()  # --score-seeds extends the scoring, and only the scoring
    code, out, err = search(["--confirm", str(run_dir), "--score-seeds", "2"], capsys)
    assert code == 0, err
    assert read_confirm(run_dir)["runs"].tolist() == [4]
    check_scoring(run_dir, "tiny-rn", seeds=2)
    again = runs_trained()
    assert {k: again[k] for k in trained} == trained
    new = f"score_{first['config_id'].iloc[0]}_seed1002"
    assert [k for k in again if k not in trained] == [new]
    assert "scoring runs: 2" in out


# ------------------------------------------------------------------ bad input, no Ray


@pytest.mark.parametrize(
    "seeds, message",
    [
        ("-1", "--confirm-seeds must be >= 0 (0: no confirmation), got -1"),
        ("1000", "--confirm-seeds must be < 1000 (the scoring seeds start there), got 1000"),
    ],
)
def test_bad_confirm_seeds_are_refused_in_one_line(tmp_path, capsys, seeds, message):
    """Below 0 means nothing; from 1000 on, confirmation seeds would reach the scoring
    seeds (search seed + 1000 + i), which must never have chosen."""
    from search.cli import main

    space = small_space(tmp_path, num_samples=1)
    runs = ["--storage", str(tmp_path / "runs")]  # should the check fail: not in the repo
    assert main(["--space", str(space), *runs, "--confirm-seeds", seeds]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


@pytest.mark.parametrize(
    "confirm, message",
    [
        ({"seeds": -2}, "tune.confirm.seeds: must be >= 0 (0: no confirmation)"),
        ({"top_k": 1.5}, "tune.confirm.top_k: expected an integer, got 1.5"),
        ({"seed": 2}, "tune.confirm.seed: unknown key 'seed'; did you mean 'seeds'?"),
    ],
)
def test_bad_confirm_settings_name_the_file_and_key(tmp_path, capsys, confirm, message):
    from search.cli import main

    space = small_space(tmp_path, num_samples=1, tune={"confirm": confirm})
    assert main(["--space", str(space), "--storage", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {space}: {message}"


def test_confirm_refuses_what_is_not_a_finished_search(tmp_path, capsys):
    from search.cli import main
    from search.rundir import SearchOptions, write_search_meta
    from search.space import load_space

    assert main(["--confirm", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"error: --confirm {tmp_path}: not a run directory of handreid-search (no search.json)"
    )

    space = small_space(tmp_path, num_samples=1)
    write_search_meta(load_space(space), SearchOptions(name="u", storage=str(tmp_path / "runs")))
    run_dir = tmp_path / "runs" / "u"  # started, no Tune state: not finished
    assert main(["--confirm", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: --confirm {run_dir}: the search there has not finished; continue it with "
        "--resume first"
    )
    assert main(["--confirm", str(run_dir), "--space", str(space)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --space: --confirm takes the search's settings from its run"
    assert main([]) == 2
    assert capsys.readouterr().err.strip() == "error: --space is required (or --confirm RUN_DIR)"


# ------------------------------------------------------------------ the summary, by formula


def test_the_confirmed_winner_is_the_best_mean_not_the_best_single_run():
    from search.confirm import summary
    from search.space import SearchSpace, TuneSettings

    space = SearchSpace("s.yml", None, {}, [], tune=TuneSettings())
    rows = [  # search runs: a 30 (lucky), b 28, c 10; their seeds: a low, b steady
        ("a", "search", "a", "vit", 30.0, "complete"),
        ("b", "search", "b", "vit", 28.0, "complete"),
        ("c", "search", "c", "rn", 10.0, "complete"),
        ("a1", "confirm", "a", "vit", 20.0, "complete"),
        ("a2", "confirm", "a", "vit", 22.0, "complete"),
        ("b1", "confirm", "b", "vit", 27.0, "complete"),
        ("b2", "confirm", "b", "vit", 29.0, "complete"),
        ("c1", "confirm", "c", "rn", 12.0, "complete"),
        ("c2", "confirm", "c", "rn", 99.0, "failed"),  # left out of the mean
    ]
    table = pd.DataFrame(
        rows, columns=["trial_id", "role", "config_id", "backbone", "best_val_mAP", "status"]
    )
    table["train_seed"] = 0
    out = summary(space, table).set_index("config_id")
    assert out.loc["a", "val_mean"] == 24.0 and out.loc["b", "val_mean"] == 28.0
    assert math.isclose(out.loc["a", "val_std"], pd.Series([30.0, 20, 22]).std(ddof=0))
    assert out.loc["a", "single_seed_rank"] == 1 and out.loc["a", "confirmed_rank"] == 2
    assert out.loc["b", "single_seed_rank"] == 2 and out.loc["b", "confirmed_rank"] == 1
    assert out["winner"].to_dict() == {"a": False, "b": True, "c": True}
    assert out.loc["c", "runs"] == 2 and out.loc["c", "val_mean"] == 11.0


def test_fixed_runs_are_served_once_each_and_a_restore_trusts_the_saved_trial_list():
    from ray.tune.search import Searcher

    from search import confirm

    runs = [confirm.Run(c, s, {"x": 1}).as_config() for s in (1, 2) for c in ("a", "b")]
    searcher = confirm.FixedRuns(runs, "/exp/confirm-1")
    first = [searcher.suggest(str(i))["config_id"] for i in range(2)]
    assert first == ["a", "b"]
    # restored: the trial list holds a/1 and b/2 (b/1 was created after its last snapshot)
    confirm._created["/exp/confirm-1"] = {"confirm_a_seed1", "confirm_b_seed2"}
    again = [searcher.suggest(str(i)) for i in range(3)]
    assert [(r["config_id"], r["train_seed"]) for r in again[:2]] == [("b", 1), ("a", 2)]
    assert again[2] == Searcher.FINISHED


def test_only_complete_trials_are_confirmed_each_over_the_same_seeds():
    """A pruned trial's early best is no seed of a full-length run: never confirmed, however
    high; every confirmed configuration gets seeds base+1 .. base+N."""
    from types import SimpleNamespace

    from search.confirm import wanted_runs
    from search.space import load_space

    space = load_space(Path(__file__).resolve().parents[1] / "spaces" / "demo.yml")
    rows = [  # best first, as the search's table is sorted
        ("p", "tiny-vit", "pruned", 40.0),
        ("a", "tiny-vit", "complete", 30.0),
        ("f", "tiny-rn", "failed", None),
        ("r", "tiny-rn", "complete", 50.0),
    ]
    table = pd.DataFrame(rows, columns=["trial_id", "backbone", "status", "best_val_mAP"])
    table["path"] = [f"/x/trial_{t}" for t in table["trial_id"]]
    results = {f"trial_{t}": SimpleNamespace(config={"model.backbone": b}) for t, b, *_ in rows}
    runs = wanted_runs(space, table, results, seeds=2)  # the demo confirms its top 2
    assert sorted({r.config_id for r in runs}) == ["a", "r"]
    seed = space.trial_config({}).train.seed
    assert sorted((r.config_id, r.train_seed) for r in runs) == [
        (c, seed + k) for c in ("a", "r") for k in (1, 2)
    ]


def test_the_winner_is_scored_on_fresh_seeds_that_chose_nothing(monkeypatch):
    """The seeds that chose the winner (its search run and confirmation runs) are never
    scored: the winner of each backbone gets ``score_seeds`` fresh ones, disjoint from
    every seed a confirmation can use, however far it is extended."""
    from types import SimpleNamespace

    from search.confirm import SCORE, Run, scoring_runs
    from search.space import SearchSpace, TuneSettings

    space = SearchSpace("s.yml", None, {}, [], tune=TuneSettings())
    rows = [("a", "vit", 30.0), ("b", "vit", 28.0), ("c", "rn", 10.0)]
    table = pd.DataFrame(rows, columns=["trial_id", "backbone", "best_val_mAP"])
    table = table.assign(role="search", config_id=table["trial_id"], status="complete")
    table["train_seed"], table["path"] = 7, [f"/x/{t}" for t in table["trial_id"]]
    selection = []
    for config, values in (("a", (20.0, 22.0)), ("b", (29.0, 27.0)), ("c", (12.0, 11.0))):
        for i, value in enumerate(values, 1):
            run = Run(config, 7 + i, {"x": config})
            row = {
                "trial_id": f"{config}{i}",
                "backbone": table.set_index("trial_id").loc[config, "backbone"],
                "best_val_mAP": value,
                "status": "complete",
                "train_seed": 7 + i,
            }
            selection.append((run, SimpleNamespace(row=row)))
    import search.confirm as confirm

    def rows_of(space, runs):  # the selection runs' trials.csv rows, without Tune results
        return pd.DataFrame(
            [{**r.row, "role": run.role, "config_id": run.config_id} for run, r in runs]
        )

    monkeypatch.setattr(confirm, "run_table", rows_of)
    runs = scoring_runs(space, table, selection, count=3)
    assert {(r.config_id, r.role) for r in runs} == {("b", SCORE), ("c", SCORE)}
    assert sorted(r.train_seed for r in runs if r.config_id == "b") == [1008, 1009, 1010]
    chose = {7, 8, 9}  # the search run's seed and the confirmation seeds
    assert not chose & {r.train_seed for r in runs}
    assert {r.key for r in runs} >= {"score_b_seed1008"} and runs[0].params == {
        "x": runs[0].config_id
    }
