"""One line per finished trial, on top of Tune's live trial table."""

from __future__ import annotations

import logging

from ray.tune import Callback

from search.optuna_search import ending

log = logging.getLogger("handreid.search")


class TrialSummary(Callback):
    def __init__(self, metric: str):
        self.metric = metric

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        kind, reason = ending(result, False)
        epoch = result.get("epoch", 0)
        if kind == "pruned":
            kind = f"pruned at epoch {epoch}"
        best = result.get("objective", float("nan"))
        line = f"trial {trial.trial_id} {kind}: best {self.metric} {best:.2f}"
        line += f" after {epoch} epochs ({result.get('backbone', '?')})"
        log.info(line + (f" [{reason}]" if reason else ""))

    def on_trial_error(self, iteration, trials, trial, **info):
        log.info("trial %s failed with an error (retried up to max_failures)", trial.trial_id)
