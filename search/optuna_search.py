"""OptunaSearch that tells Optuna the truth about how each trial ended.

Ray hands a trial stopped early by ASHA to the searcher as if it had completed, and
Optuna would record it as COMPLETE with its early value, which misleads TPE and the
importance analysis. Here such a trial is told as PRUNED (keeping its intermediate
values, reported per epoch); a trial whose training diverged is told as PRUNED too (so
TPE learns to avoid its region, see ``failed_state``) and any other failed trial as FAIL,
each with the reason as a user attribute.

The study is an SQLite file in the run directory on the driver's disk. The searcher's pickles
(Tune's ``tuner.pkl`` and ``searcher-state-*.pkl``) carry no path to it: unpickled, a searcher
opens the file this process registered for its study name (``use_study_file``). With URI
storage the searcher also saves a copy of the study next to its state, which Tune uploads to
the storage with the rest of its experiment state, so a new head can take it from there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sqlite3
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from search.sampler import group_of

log = logging.getLogger(__name__)

FAILED_STATUSES = ("diverged", "oom")
LOST = "driver lost"  # fail_reason of a study trial a killed driver left running
SNAPSHOT_FILE = "study.db"  # the study's copy in Tune's experiment folder (URI storage only)

# study name -> (this process's SQLite file of the study, whether to snapshot it); see
# ``use_study_file``
_study_files: dict[str, tuple[Path, bool]] = {}


def use_study_file(study_name: str, path: Path, *, snapshot: bool) -> None:
    """Keep the study ``study_name`` in the SQLite file ``path`` in this process. Tune restores
    a searcher by unpickling it, and the path it was pickled with may be another head's disk,
    or a folder Ray unpacked for an earlier job: a restored searcher binds to this file instead.
    ``snapshot``: also copy the study into Tune's staging folder at each save of the search
    state (``SNAPSHOT_FILE``), for URI storage. With a folder as storage the run directory is
    the experiment folder and ``path`` is already there: no second study file is written."""
    _study_files[study_name] = (Path(path).resolve(), snapshot)


def copy_study(src: Path, dst: Path) -> None:
    """A consistent copy of a live SQLite study (sqlite3's online backup), swapped in whole."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(f"{src.as_uri()}?mode=ro", uri=True)) as source:
        with contextlib.closing(sqlite3.connect(tmp)) as target:
            source.backup(target)
    os.replace(tmp, dst)


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


def failed_state(reason: str | None) -> optuna.trial.TrialState:
    """The study state of a failed trial. TPE leaves FAIL trials out of its model, so it
    would go on sampling the learning rates that diverged. A PRUNED trial is ranked below
    every complete one (by its last reported value; last of all without one), so TPE counts
    a diverged trial's region as bad. Other failures (an error, out of memory) say nothing
    about the configuration's quality: FAIL."""
    if reason and reason.startswith("diverged"):
        return optuna.trial.TrialState.PRUNED
    return optuna.trial.TrialState.FAIL


class HandReIDOptunaSearch(OptunaSearch):
    def __init__(
        self,
        *args,
        metric_name: str | None = None,
        balance: tuple[str, list] | None = None,
        **kwargs,
    ):
        self.metric_name = metric_name  # the study's objective as dashboards label it
        self.balance = balance  # (parameter, choices): each new trial takes the least-used
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode) -> None:
        super()._setup_study(mode)
        if getattr(self, "metric_name", None):
            self._ot_study.set_metric_names([self.metric_name])

    def suggest(self, trial_id: str) -> dict | None:
        if getattr(self, "balance", None) and trial_id not in self._ot_trials:
            self._enqueue_balanced()
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return params

    def _enqueue_balanced(self) -> None:
        """Fix the balanced parameter of the next trial to its least-used choice (ties: the
        space's order); TPE then samples the rest of the trial given that choice. Queued
        trials (start points) go first, as they are."""
        name, choices = self.balance
        trials = self._ot_study.get_trials(deepcopy=False)
        if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
            return
        used = {choice: 0 for choice in choices}
        for t in trials:
            if t.user_attrs.get("fail_reason") == LOST:
                continue  # a lost driver's trial: queued again (start points) or never ran
            if group_of(t, name) in used:
                used[group_of(t, name)] += 1
        self._ot_study.enqueue_trial({name: min(choices, key=used.__getitem__)})

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

    def __getstate__(self) -> dict[str, Any]:
        """The searcher without its study's storage: each Optuna trial by its id in the study,
        the study by its file's URL (used only when this process registered no file)."""
        state = self.__dict__.copy()
        if self._storage is None or self._ot_study is None:  # in memory, or not set up yet
            return state
        state["_study_url"] = self._storage.url
        state["_storage"] = state["_ot_study"] = None
        state["_ot_trials"] = {k: t._trial_id for k, t in self._ot_trials.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.bind_study()

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self.bind_study()

    def bind_study(self) -> None:
        """Open the study's storage after unpickling: the file registered for the study name
        (``use_study_file``), else the one it was pickled with. Optuna trials the file does
        not hold (a study copy older than the searcher state) are dropped with a warning;
        ``known`` finds them again should they appear."""
        url = self.__dict__.get("_study_url")
        if url is None and self._ot_study is not None:  # state pickled before this method
            url = self._ot_study._storage.url
        if url is None:  # in memory, or not set up: nothing on disk to bind
            return
        registered = _study_files.get(self._study_name)
        if registered:
            url = f"sqlite:///{registered[0]}"
        storage = optuna.storages.RDBStorage(url)
        study = optuna.create_study(
            storage=storage,
            sampler=self._sampler,
            pruner=optuna.pruners.NopPruner(),
            study_name=self._study_name,
            load_if_exists=True,
            direction="minimize" if self._mode == "min" else "maximize",
        )
        ids = {t._trial_id for t in storage.get_all_trials(study._study_id, deepcopy=False)}
        trials = {}
        for ray_id, trial in self._ot_trials.items():
            number = trial if isinstance(trial, int) else trial._trial_id
            if number in ids:
                trials[ray_id] = optuna.Trial(study, number)
            else:
                log.warning("trial %s is not in the study %s; dropped", ray_id, url)
        self._storage, self._ot_study, self._ot_trials = storage, study, trials
        self.__dict__.pop("_study_url", None)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Tune's save of the searcher state into its staging folder, which it then uploads
        to the storage; with a snapshot registered (URI storage), a copy of the study too."""
        super().save_to_dir(checkpoint_dir, session_str)
        registered = _study_files.get(self._study_name)
        if registered and registered[1] and self._storage is not None:
            src = Path(self._storage.url.removeprefix("sqlite:///"))
            if src.is_file():
                copy_study(src, Path(checkpoint_dir) / SNAPSHOT_FILE)

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
                self._ot_study.tell(trial, state=failed_state(reason))
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
