"""Optuna studies rebuilt from the trials, and parameter importance per backbone.

The studies reuse ``optuna.importance`` (fANOVA and PED-ANOVA) and
``optuna.visualization`` instead of re-implementing them. Two kinds of importance:

- over COMPLETE trials, by their best value: a pruned trial carries an early value only;
- at each ASHA rung, over every trial that reached it (pruned ones included), by its
  value at that epoch: the values ASHA compared, from many more trials.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from analysis.load import RunData, config_key

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

STATES = {
    "complete": optuna.trial.TrialState.COMPLETE,
    "pruned": optuna.trial.TrialState.PRUNED,
    "failed": optuna.trial.TrialState.FAIL,
}
EVALUATORS = {
    "fANOVA": lambda seed: optuna.importance.FanovaImportanceEvaluator(seed=seed),
    "PED-ANOVA": lambda seed: optuna.importance.PedAnovaImportanceEvaluator(),
}
MIN_TRIALS = 3
MIN_RUNG_TRIALS = 4
COLUMNS = ["backbone", "evaluator", "parameter", "importance", "n_trials"]


def distribution(spec: dict[str, Any] | None, values: list[Any]):
    """The parameter's distribution from search.json, or one inferred from its values."""
    if spec:
        if spec["type"] == "float":
            return FloatDistribution(spec["low"], spec["high"], log=spec.get("log", False))
        if spec["type"] == "int":
            return IntDistribution(int(spec["low"]), int(spec["high"]), log=spec.get("log", False))
        if spec["type"] == "bool":
            return CategoricalDistribution([False, True])
        return CategoricalDistribution(spec["choices"])
    if all(isinstance(v, bool) or isinstance(v, str) for v in values):
        return CategoricalDistribution(sorted(set(values), key=str))
    if all(isinstance(v, int) for v in values):
        return IntDistribution(
            min(values), max(values) if max(values) > min(values) else min(values) + 1
        )
    low, high = float(min(values)), float(max(values))
    return FloatDistribution(low, high if high > low else low + 1e-12)


def rebuild_study(
    data: RunData, *, backbone: str | None = None, by_key: bool = True
) -> optuna.Study:
    """An in-memory study with one FrozenTrial per finished trial (running ones skipped).

    ``by_key``: parameters named by config key (one backbone at a time, so every key has one
    range); otherwise by the Optuna names of the search, which stay distinct across branches.
    """
    trials = data.trials if backbone is None else data.trials[data.trials["backbone"] == backbone]
    study = _new_study(data, backbone)
    curves = data.curves.groupby("trial_id")
    for row in trials.itertuples():
        if row.status not in STATES:
            continue
        value = getattr(row, data.best_column)
        intermediate = {}
        if row.trial_id in curves.groups:
            curve = curves.get_group(row.trial_id)
            intermediate = {
                int(e): float(v) for e, v in zip(curve["epoch"], curve[data.metric]) if _finite(v)
            }
        state = STATES[row.status]
        ok = state == optuna.trial.TrialState.COMPLETE and _finite(value)
        if state == optuna.trial.TrialState.COMPLETE and not ok:
            state = optuna.trial.TrialState.FAIL
        study.add_trial(
            _frozen(data, trials, row, by_key, state, value if ok else None, intermediate)
        )
    return study


def rung_study(data: RunData, backbone: str, epoch: int) -> optuna.Study:
    """An in-memory study of every trial of ``backbone`` with a value at ``epoch``, whatever
    its final state, as a COMPLETE trial valued at that epoch; parameters by config key."""
    trials = data.trials[data.trials["backbone"] == backbone]
    at = value_at(data, epoch)
    study = _new_study(data)
    for row in trials.itertuples():
        if row.trial_id in at:
            study.add_trial(
                _frozen(
                    data, trials, row, True, optuna.trial.TrialState.COMPLETE, at[row.trial_id], {}
                )
            )
    return study


def value_at(data: RunData, epoch: int) -> dict[str, float]:
    """Trial id -> the metric at ``epoch`` (the first epoch at or past it, as ASHA records)."""
    curves = data.curves[(data.curves["epoch"] >= epoch) & data.curves[data.metric].map(_finite)]
    first = curves.sort_values("epoch", kind="stable").groupby("trial_id", sort=False).head(1)
    return {t: float(v) for t, v in zip(first["trial_id"], first[data.metric])}


def _new_study(data: RunData, name: str | None = None) -> optuna.Study:
    """An in-memory study, named ``name`` (e.g. its backbone) when given."""
    direction = "maximize" if data.mode == "max" else "minimize"
    return optuna.create_study(direction=direction, study_name=name)


def _frozen(data, trials, row, by_key, state, value, intermediate):
    params, dists = {}, {}
    for name, param in row.optuna_params.items():
        key = config_key(name) if by_key else name
        if by_key and key == "model.backbone":
            continue
        observed = [p[name] for p in trials["optuna_params"] if name in p]
        params[key] = param
        dists[key] = distribution(data.distributions.get(name), observed)
    return optuna.trial.create_trial(
        state=state,
        value=value,
        params=params,
        distributions=dists,
        intermediate_values=intermediate,
        user_attrs={"trial_id": row.trial_id, "backbone": row.backbone, "status": row.status},
    )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def importance_table(data: RunData, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """Importance of each searched parameter per backbone and evaluator over COMPLETE
    trials, and notes on gaps."""
    rows, notes = [], []
    for backbone in sorted(data.trials["backbone"].unique()):
        study = rebuild_study(data, backbone=backbone)
        found, note = _importances(study, seed, MIN_TRIALS, backbone, "complete")
        rows += [{"backbone": backbone, **r} for r in found]
        notes += [note] if note else []
    return pd.DataFrame(rows, columns=COLUMNS), notes


def rung_importance_table(data: RunData, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """Importance at each ASHA rung, per backbone, over every trial that reached the rung
    (its value at that epoch), and notes on rungs skipped."""
    rows, notes = [], []
    for epoch in data.rungs:
        for backbone in sorted(data.trials["backbone"].unique()):
            study = rung_study(data, backbone, epoch)
            where = f"{backbone} at epoch {epoch}"
            found, note = _importances(study, seed, MIN_RUNG_TRIALS, where, "reached it")
            rows += [{"rung": epoch, "backbone": backbone, **r} for r in found]
            notes += [note] if note else []
    return pd.DataFrame(rows, columns=["rung", *COLUMNS]), notes


def _importances(
    study: optuna.Study, seed: int, minimum: int, where: str, counted: str
) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of (evaluator, parameter, importance, n_trials), or a note saying why none."""
    complete = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    varied = [
        k
        for k in {k for t in complete for k in t.params}
        if len({repr(t.params.get(k)) for t in complete}) > 1
    ]
    if len(complete) < minimum or not varied:
        return [], (
            f"{where}: too few trials for importance ({len(complete)} {counted}; "
            f"needs {minimum} with varied parameters)"
        )
    rows, problems = [], []
    for name, make in EVALUATORS.items():
        try:
            with warnings.catch_warnings():  # PED-ANOVA warns about regimes with few trials
                warnings.simplefilter("ignore", UserWarning)
                scores = optuna.importance.get_param_importances(study, evaluator=make(seed))
        except (ValueError, RuntimeError) as err:
            problems.append(f"{where} {name}: not computed ({err})")
            continue
        rows += [
            {"evaluator": name, "parameter": p, "importance": float(v), "n_trials": len(complete)}
            for p, v in scores.items()
        ]
    return rows, "; ".join(problems) or None
