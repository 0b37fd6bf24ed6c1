"""The searcher records trials that a restored trial list holds but its own saved state
lacks (a driver killed while Tune copied its state files)."""

from __future__ import annotations

import optuna
import pytest

pytest.importorskip("ray.tune.search.optuna")


def searcher(storage: str):
    from search.optuna_search import HandReIDOptunaSearch

    def space(trial):
        trial.suggest_float("x", 0.0, 1.0)

    return HandReIDOptunaSearch(
        space=space,
        metric="objective",
        mode="max",
        study_name="s",
        storage=optuna.storages.RDBStorage(storage),
    )


def test_a_trial_missing_from_the_saved_searcher_is_found_in_the_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    before = searcher(storage)
    before.suggest("aaaa0001")
    before.suggest("aaaa0002")
    after = searcher(storage)  # restored from a state saved before both were asked
    after.on_trial_result("aaaa0001", {"objective": 0.4, "epoch": 1})
    after.on_trial_complete("aaaa0001", {"objective": 0.5, "epoch": 2, "status": "done"})
    after.on_trial_complete("aaaa0002", {"objective": 0.3, "epoch": 1, "status": "running"})
    after.on_trial_complete("unknown1", {"objective": 0.3, "epoch": 1, "status": "done"})
    study = optuna.load_study(study_name="s", storage=storage)
    trials = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert set(trials) == {"aaaa0001", "aaaa0002"}
    assert trials["aaaa0001"].state == optuna.trial.TrialState.COMPLETE
    assert trials["aaaa0001"].value == 0.5
    assert trials["aaaa0001"].intermediate_values == {1: 0.4, 2: 0.5}
    assert trials["aaaa0002"].state == optuna.trial.TrialState.PRUNED


def test_the_study_names_its_objective(tmp_path):
    """optuna-dashboard labels the axis with the metric, not "Objective 0"."""
    from search.optuna_search import HandReIDOptunaSearch

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    searcher = HandReIDOptunaSearch(
        space=lambda trial: {"y": trial.suggest_float("x", 0.0, 1.0)},
        metric="objective",
        mode="max",
        study_name="s",
        storage=optuna.storages.RDBStorage(storage),
        metric_name="val_mAP",
    )
    searcher.suggest("t0")
    assert optuna.load_study(study_name="s", storage=storage).metric_names == ["val_mAP"]


def test_balance_gives_each_choice_the_same_number_of_trials(tmp_path):
    """TPE left alone favours the backbone that scores higher; with tune.balance each new
    trial takes the least-used choice, and TPE samples the rest of it."""
    from search.optuna_search import HandReIDOptunaSearch

    def space(trial):
        backbone = trial.suggest_categorical("model.backbone", ["a", "b"])
        trial.suggest_float("x", 0.0, 1.0)
        return {"model.backbone": backbone}

    searcher = HandReIDOptunaSearch(
        space=space,
        metric="objective",
        mode="max",
        study_name="s",
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}"),
        points_to_evaluate=[{"model.backbone": "a", "x": 0.5}],
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2),
        balance=("model.backbone", ["a", "b"]),
    )
    chosen = []
    for i in range(9):
        params = searcher.suggest(f"t{i}")
        chosen.append(params["model.backbone"])
        value = 100.0 if params["model.backbone"] == "a" else 1.0  # "a" is far better
        searcher.on_trial_complete(f"t{i}", {"objective": value, "epoch": 1, "status": "done"})
    assert chosen[0] == "a"  # the start point first, as given
    assert sorted(chosen).count("a") == 5 and chosen.count("b") == 4, chosen


def test_tpe_steers_away_from_where_trials_diverged(tmp_path):
    """Diverged trials are told to the study as PRUNED with their reason: TPE ranks them
    below every complete trial and samples their region less (FAIL would be ignored)."""
    from search.optuna_search import HandReIDOptunaSearch

    searcher = HandReIDOptunaSearch(
        space=lambda trial: {"y": trial.suggest_float("x", 0.0, 1.0)},
        metric="objective",
        mode="max",
        study_name="s",
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}"),
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=10),
    )
    high = []
    for i in range(40):
        x = searcher.suggest(f"t{i}")["y"]
        if x > 0.5:  # the learning rates that diverge
            result = {"status": "diverged", "error": "non-finite loss", "epoch": 1}
        else:
            result = {"objective": 10.0, "epoch": 3, "status": "done"}
        searcher.on_trial_complete(f"t{i}", result)
        high.append(x > 0.5)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    diverged = [t for t in study.trials if t.params["x"] > 0.5]
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in diverged)
    assert all(t.user_attrs["fail_reason"].startswith("diverged") for t in diverged)
    assert sum(high[10:]) <= 15, sum(high[10:])  # 4-12 of 30 over 5 seeds; told FAIL: 23-28
