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
