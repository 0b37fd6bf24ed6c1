"""A study per backbone beside the search's study, for optuna-dashboard.

The search has one Optuna study, whose trials each backbone's sampler reads apart
(``search.sampler``). Importance and history over that study pool both backbones: the
backbone itself looks unimportant and a shared parameter gets the weight of their
difference. After the search, each value of the group key gets a derived study,
``<study> [<value>]``, holding that value's finished trials, their parameters named as in a
study of that backbone alone (``optim.lr_visual``, not ``optim.lr_visual
(model.backbone=tiny-vit)``) and the key left out. They are rebuilt at every wrap-up; the
search reads only its own study.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.sampler import group_of

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def group_study_name(study_name: str, value: Any) -> str:
    return f"{study_name} [{value}]"


def own_name(name: str, key: str, value: Any) -> str:
    """A parameter's name in a study of one value of ``key``: its condition on it dropped."""
    suffix = f" ({key}={value})"
    return name.removesuffix(suffix)


def as_member(trial: FrozenTrial, key: str, value: Any) -> FrozenTrial:
    params = {own_name(n, key, value): v for n, v in trial.params.items() if n != key}
    dists = {own_name(n, key, value): d for n, d in trial.distributions.items() if n != key}
    return optuna.trial.create_trial(
        state=trial.state,
        value=trial.value if trial.state != TrialState.FAIL else None,
        params=params,
        distributions=dists,
        user_attrs={**trial.user_attrs, "search_trial_number": trial.number},
        intermediate_values=trial.intermediate_values,
    )


def write_group_studies(storage, study_name: str, key: str, values: list) -> list[str]:
    """(Re)write one derived study per value of ``key``; returns their names."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    names = []
    for value in values:
        name = group_study_name(study_name, value)
        if name in optuna.get_all_study_names(storage):
            optuna.delete_study(study_name=name, storage=storage)
        view = optuna.create_study(study_name=name, storage=storage, direction=study.direction)
        if study.metric_names:
            view.set_metric_names(study.metric_names)
        view.set_user_attr("derived_from", study_name)
        view.set_user_attr("group", {key: value})
        view.add_trials([as_member(t, key, value) for t in trials if group_of(t, key) == value])
        names.append(name)
    return names
