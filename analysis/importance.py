"""Optuna studies rebuilt from the trials, and parameter importance per backbone.

The studies reuse ``optuna.importance`` (fANOVA and PED-ANOVA) and
``optuna.visualization`` instead of re-implementing them. Only COMPLETE trials inform
the importances: a trial pruned by ASHA carries an early value, not a final one.
"""

from __future__ import annotations

import logging
import math
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
    study = optuna.create_study(direction="maximize" if data.mode == "max" else "minimize")
    curves = data.curves.groupby("trial_id")
    for row in trials.itertuples():
        if row.status not in STATES:
            continue
        params, dists = {}, {}
        for name, value in row.optuna_params.items():
            key = config_key(name) if by_key else name
            if by_key and key == "model.backbone":
                continue
            observed = [p[name] for p in trials["optuna_params"] if name in p]
            params[key] = value
            dists[key] = distribution(data.distributions.get(name), observed)
        value = getattr(row, data.best_column)
        intermediate = {}
        if row.trial_id in curves.groups:
            curve = curves.get_group(row.trial_id)
            intermediate = {
                int(e): float(v)
                for e, v in zip(curve["epoch"], curve[data.metric])
                if isinstance(v, float) and math.isfinite(v)
            }
        state = STATES[row.status]
        ok = (
            state == optuna.trial.TrialState.COMPLETE
            and isinstance(value, float)
            and math.isfinite(value)
        )
        if state == optuna.trial.TrialState.COMPLETE and not ok:
            state = optuna.trial.TrialState.FAIL
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value if ok else None,
                params=params,
                distributions=dists,
                intermediate_values=intermediate,
                user_attrs={"trial_id": row.trial_id, "backbone": row.backbone},
            )
        )
    return study


def importance_table(data: RunData, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """Importance of each searched parameter per backbone and evaluator, and notes on gaps."""
    rows, notes = [], []
    for backbone in sorted(data.trials["backbone"].unique()):
        study = rebuild_study(data, backbone=backbone)
        complete = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
        varied = [
            k
            for k in {k for t in complete for k in t.params}
            if len({repr(t.params.get(k)) for t in complete}) > 1
        ]
        if len(complete) < MIN_TRIALS or not varied:
            notes.append(
                f"{backbone}: {len(complete)} complete trials, too few for importance "
                f"(needs {MIN_TRIALS} with varied parameters)"
            )
            continue
        for name, make in EVALUATORS.items():
            try:
                scores = optuna.importance.get_param_importances(study, evaluator=make(seed))
            except (ValueError, RuntimeError) as err:
                notes.append(f"{backbone} {name}: not computed ({err})")
                continue
            rows += [
                {
                    "backbone": backbone,
                    "evaluator": name,
                    "parameter": p,
                    "importance": float(v),
                    "n_trials": len(complete),
                }
                for p, v in scores.items()
            ]
    return pd.DataFrame(
        rows, columns=["backbone", "evaluator", "parameter", "importance", "n_trials"]
    ), notes
