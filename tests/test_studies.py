"""Per-backbone studies for optuna-dashboard, derived from the search's study."""

from __future__ import annotations

import optuna

from search.studies import group_study_name, write_group_studies

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_each_backbone_gets_a_study_of_its_own_trials(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.set_metric_names(["val_mAP"])
    for i in range(6):
        trial = study.ask()
        backbone = trial.suggest_categorical("model.backbone", ["a", "b"])
        lr = trial.suggest_float(f"lr (model.backbone={backbone})", 0.0, 1.0)
        trial.suggest_float("scale", 10.0, 40.0)
        trial.report(lr, 1)
        if i == 5:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, 10 * lr + (5 if backbone == "b" else 0))
    names = write_group_studies(storage, "s", "model.backbone", ["a", "b"])
    names = write_group_studies(storage, "s", "model.backbone", ["a", "b"])  # rebuilt, not added
    assert names == [group_study_name("s", "a"), group_study_name("s", "b")] == ["s [a]", "s [b]"]
    for value, name in zip("ab", names):
        view = optuna.load_study(study_name=name, storage=storage)
        own = [t for t in study.trials if t.params["model.backbone"] == value]
        assert len(view.trials) == len(own)
        assert view.metric_names == ["val_mAP"]
        for mine, source in zip(view.trials, own):
            assert set(mine.params) == {"lr", "scale"}
            assert mine.state == source.state and mine.value == source.value
            assert mine.intermediate_values == source.intermediate_values
            assert mine.user_attrs["search_trial_number"] == source.number
        optuna.importance.get_param_importances(view)  # importance works per backbone
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 6
