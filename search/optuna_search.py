"""OptunaSearch that tells Optuna the truth about how each trial ended.

Ray hands a trial stopped early by ASHA to the searcher as if it had completed, and
Optuna would record it as COMPLETE with its early value, which misleads TPE and the
importance analysis. Here such a trial is told as PRUNED (keeping its intermediate
values, reported per epoch); a trial whose training diverged or ran out of memory is
told as FAIL with the reason as a user attribute.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)

FAILED_STATUSES = ("diverged", "oom")


def ending(result: dict[str, Any] | None, error: bool) -> tuple[str, str | None]:
    """How a trial ended from its last result: complete, pruned or failed (with reason)."""
    result = result or {}
    status = result.get("status")
    if error:
        return "failed", "the trial raised an error"
    if status in FAILED_STATUSES:
        return "failed", f"{status}: {result.get('error') or status}"
    if status == "running":
        return "pruned", None
    if status in ("done", "early_stopped"):
        return "complete", None
    return "failed", "no result reported"


class HandReIDOptunaSearch(OptunaSearch):
    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return params

    def known(self, trial_id: str) -> bool:
        """Whether the study holds this Ray trial. A searcher state saved before a trial that
        the restored trial list holds (a driver killed during Tune's state copy) lacks it:
        find its study trial by the Ray id it was asked with."""
        if trial_id in self._ot_trials:
            return True
        for frozen in self._ot_study.get_trials(deepcopy=False):
            if frozen.user_attrs.get("ray_trial_id") == trial_id:
                self._ot_trials[trial_id] = optuna.Trial(self._ot_study, frozen._trial_id)
                return True
        return False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or not self.known(trial_id):
            return
        value, epoch = result.get(self.metric), int(result.get("epoch", 0))
        steps = self.__dict__.setdefault("_reported_epochs", {}).setdefault(trial_id, set())
        if value is not None and value == value and epoch not in steps:  # skip NaN, repeats
            with _already_told(trial_id):
                self._ot_trials[trial_id].report(float(value), epoch)
            steps.add(epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)  # warns, ignores
        if not self.known(trial_id):
            log.warning("trial %s is not in the study; its ending is not recorded", trial_id)
            return
        trial = self._ot_trials[trial_id]
        if result and not error:  # the result that made ASHA stop the trial is not sent above
            self.on_trial_result(trial_id, result)
        kind, reason = ending(result, error)
        epoch = int((result or {}).get("epoch", 0))
        with _already_told(trial_id):
            trial.set_user_attr("epochs", epoch)
            if kind == "pruned":
                trial.set_user_attr("pruned_at_epoch", epoch)
                self._ot_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            elif kind == "failed":
                trial.set_user_attr("fail_reason", reason)
                self._ot_study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                self._ot_study.tell(trial, float(result[self.metric]))
        self._completed_trials.add(trial_id)


@contextlib.contextmanager
def _already_told(trial_id: str):
    """After a driver crash, Tune may replay a trial the study already recorded as finished
    (the searcher's saved state is older than the study): keep the study's record."""
    try:
        yield
    except optuna.exceptions.UpdateFinishedTrialError:
        log.info("trial %s is already finished in the study; keeping that record", trial_id)
    except ValueError as exc:  # e.g. a NaN objective: keep the search going
        log.warning("could not record trial %s in the study: %s", trial_id, exc)
