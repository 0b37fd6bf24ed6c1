"""ASHA that keeps its rungs across a resumed search.

Ray Tune saves no scheduler state (ray-project/ray#30838): ``Tuner.restore`` unpickles the
scheduler that ``build_tuner`` made, before the search ran, so Tune's own ASHA resumes with
empty rungs, no cutoffs, and lets trials that an uninterrupted search would stop run on.
``ResumableASHA`` fills its rungs again from what the trials reported before it decides
anything, and so stops exactly where an uninterrupted search would have.
"""

from __future__ import annotations

import copy
import heapq
import json
import logging
import math
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow.fs
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"  # Tune's per-trial log: one JSON object per reported result


class ResumableASHA(AsyncHyperBandScheduler):
    """``ASHAScheduler`` (same arguments) whose rungs survive ``Tuner.restore``.

    Before its first decision the scheduler reads the ``result.json`` of every trial Tune
    holds (from the trial's storage: a local folder or any pyarrow filesystem, wherever the
    experiment was restored from) and feeds each recorded result through ASHA's handling
    of a live result. In a new search there are no results yet and nothing is fed. In a
    restored one the rungs then hold what an uninterrupted search holds at that point.

    Order: each trial's results in file order (the order Tune appended them), the trials
    merged by the results' ``timestamp`` (whole seconds, from the node the trial ran on),
    ties broken by trial id. The rungs do not depend on it: a rung records each trial's
    first result at or past its milestone, whatever the other trials did in between. The
    decisions ASHA made do, and seconds cannot order them, so they are not replayed but
    read back: Tune marks the result that a scheduler stopped a trial at ``done``.

    A trial stopped before the interruption that Tune runs again (its stop never reached
    Tune's saved state) is stopped again at its first result at or past that result's
    epoch: its own rung record would make ASHA skip that rung and let it go on.

    With several ``brackets`` (asynchronous Hyperband: bracket ``s`` has its first rung at
    ``grace_period * reduction_factor**s``, the last none, a hedge against late starters)
    a trial's bracket follows from its id, with Ray's odds (a bracket with more rungs takes
    more trials), so a restored trial keeps its bracket; Ray draws it at random instead.

    Results inside a trial's warm-up (``in_warmup``) are not judged. A result goes into the
    rung it reached: the highest one whose milestone lies after the trial's previous result
    and at or before this one. A rung the trial passed in its warm-up stays without it, so
    an epoch-7 value is never compared with other trials' epoch-4 values. The same rule
    holds for a live result, the result a trial completes with, and a result replayed when
    the rungs are rebuilt (``place``).

    ``group_by`` (a key of the trial's config, e.g. ``model.backbone``) gives every value
    its own rungs: a trial is compared only with trials of its group, so a backbone whose
    validation mAP runs lower overall is not pruned wholesale by the other's cutoffs.

    ``milestones`` sets the rungs' epochs directly (ascending; bracket ``s`` has all but the
    first ``s``), in place of ``grace_period * reduction_factor**k``. ``promote_top``: a
    trial also has to rank among the best ``promote_top`` values recorded at the rung (its
    own included) to go on. A sampler that improves makes each new trial beat the top
    ``1/reduction_factor`` of the earlier, worse ones, so ASHA alone lets most of them run to
    the end; this keeps the cut against the best seen.

    Driven outside Tune (``search.strategy.TuneLoop``) the controller is None: a new search,
    nothing recorded to rebuild the rungs from.
    """

    def __init__(
        self,
        *args: Any,
        group_by: str | None = None,
        milestones: Sequence[int] | None = None,
        promote_top: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._promote_top = promote_top
        if milestones is not None:
            for s, bracket in enumerate(self._brackets):
                bracket._rungs = [(m, {}) for m in reversed(list(milestones)[s:])]
        self._rebuilt = False
        self._stopped_at: dict[str, float] = {}  # trial id -> time_attr Tune stopped it at
        self._group_by = group_by
        self._groups: dict[Any, list] = {}  # group value -> its brackets (rungs)
        self._empty_brackets = copy.deepcopy(self._brackets)  # each group's rungs start so
        self._reached: dict[str, float] = {}  # trial id -> furthest time_attr it reported

    def __setstate__(self, state: dict) -> None:
        """Unpickle, also a scheduler pickled before brackets were kept per group (a search
        started by an older version and resumed now): one bracket."""
        self.__dict__.update(state)
        if "_empty_brackets" not in state:
            self._empty_brackets = [self.__dict__.pop("_empty_bracket")]
        self.__dict__.setdefault("_reached", {})
        self.__dict__.setdefault("_promote_top", None)

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)  # checks metric and mode
        brackets = self._brackets
        if self._group_by is not None:
            group = (trial.config or {}).get(self._group_by)
            if group not in self._groups:
                self._groups[group] = copy.deepcopy(self._empty_brackets)
            brackets = self._groups[group]
        self._trial_info[trial.trial_id] = brackets[self.bracket_index(trial.trial_id)]

    def bracket_index(self, trial_id: str) -> int:
        """The trial's bracket, fixed by its id: the same after a restore."""
        sizes = np.array([len(b._rungs) for b in self._empty_brackets])
        odds = np.exp(sizes - sizes.max())  # Ray's odds of each bracket
        u = zlib.crc32(trial_id.encode()) / 2**32
        index = int(np.searchsorted(np.cumsum(odds / odds.sum()), u, side="right"))
        return min(index, len(sizes) - 1)

    def rungs(self, bracket: int = 0) -> dict[Any, list[tuple[float, dict]]]:
        """Each group's rungs in one bracket (milestone, {trial id: recorded value}); one
        None group without ``group_by``."""
        if self._group_by is None:
            return {None: list(self._brackets[bracket]._rungs)}
        return {g: list(b[bracket]._rungs) for g, b in self._groups.items()}

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        self._rebuild_once(tune_controller)  # before a restored trial starts again
        return super().choose_trial_to_run(tune_controller)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self._rebuild_once(tune_controller)
        action = self._judge(trial, result)
        stopped, now = self._stopped_at.get(trial.trial_id), result.get(self._time_attr)
        if action == TrialScheduler.CONTINUE and None not in (stopped, now) and now >= stopped:
            action = TrialScheduler.STOP
        if action == TrialScheduler.STOP:
            self._num_stopped += 1
        return action

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._rebuild_once(tune_controller)
        self._judge(trial, result)  # recorded as a live result would be; nothing to decide
        del self._trial_info[trial.trial_id]

    def _judge(self, trial: Trial, result: dict) -> str:
        """ASHA's decision on one result, recorded in the rung the result reached; every
        result with ``time_attr`` moves the trial on, warm-up ones too."""
        now = result.get(self._time_attr)
        if now is None:
            return TrialScheduler.CONTINUE
        before = self._reached.get(trial.trial_id, -math.inf)
        self._reached[trial.trial_id] = max(before, now)
        if in_warmup(result, self._time_attr) or result.get(self._metric) is None:
            return TrialScheduler.CONTINUE
        if now >= self._max_t and self._stop_last_trials:
            return TrialScheduler.STOP
        reward = self._metric_op * result[self._metric]
        bracket = self._trial_info[trial.trial_id]
        return place(bracket, trial.trial_id, before, now, reward, self._promote_top)

    def _rebuild_once(self, tune_controller) -> None:
        if self._rebuilt:
            return
        self._rebuilt = True  # once per instance: Tune.restore makes a new one
        if tune_controller is None:  # driven outside Tune: a new search
            return
        trials = [t for t in tune_controller.get_trials() if t.trial_id in self._trial_info]
        fed = 0
        for trial, result in recorded_results(trials):
            self._judge(trial, result)  # the rule of live results; decisions are read back
            if result.get("done") and self._time_attr in result:
                self._stopped_at.setdefault(trial.trial_id, result[self._time_attr])
            fed += 1
        if fed:
            log.info(
                "ASHA rungs rebuilt from %d recorded results of %d trials (%d stopped): %s",
                fed,
                len(trials),
                len(self._stopped_at),
                "; ".join(
                    b.debug_str() for b in [*self._brackets, *sum(self._groups.values(), [])]
                ),
            )


def place(
    bracket, trial_id: str, before: float, now: float, reward: float, top: int | None = None
) -> str:
    """Record ``reward`` in the bracket's highest rung whose milestone lies in (``before``,
    ``now``] and judge it against that rung's cutoff (and, with ``top``, against the
    ``top``-th best value recorded there, this one included). A rung the trial passed
    earlier (in its warm-up) is not filled late, as Ray's ``_Bracket.on_result`` would (it
    fills the first rung at or below ``now`` that lacks the trial)."""
    for milestone, recorded in bracket._rungs:  # highest first
        if not before < milestone <= now:
            continue
        if trial_id in recorded:
            return TrialScheduler.CONTINUE
        cutoff = bracket.cutoff(recorded)
        recorded[trial_id] = reward
        stop = cutoff is not None and reward < cutoff
        if top is not None and len(recorded) > top:
            stop = stop or reward < sorted(recorded.values(), reverse=True)[top - 1]
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE
    return TrialScheduler.CONTINUE


def in_warmup(result: dict, time_attr: str) -> bool:
    """A result no rung judges: from the trial's warm-up (epochs up to ``warmup_epochs``,
    reported by the trial, before its learning rate peaked), or before the share of its
    schedule the space sets (``judge_from_epoch``). A OneCycle trial at a third of its peak
    rate would lose to a cosine trial near its peak, and TPE would learn "OneCycle is bad";
    the trial is judged at the first rung it reaches after both."""
    now, warmup = result.get(time_attr), result.get("warmup_epochs") or 0
    if now is None:
        return False
    return (warmup > 0 and now <= warmup) or now < (result.get("judge_from_epoch") or 0)


def recorded_results(trials: list[Trial]) -> Iterator[tuple[Trial, dict]]:
    """The trials' recorded results, each trial's in file order, merged by timestamp."""

    def keyed(trial: Trial) -> Iterator[tuple[float, str, Trial, dict]]:
        for result in read_results(trial):
            stamp = result.get("timestamp")
            yield (math.inf if stamp is None else stamp), trial.trial_id, trial, result

    ordered = sorted(trials, key=lambda t: t.trial_id)
    # merge keeps each trial's own order, even where its timestamps run backwards
    for _, _, trial, result in heapq.merge(*map(keyed, ordered), key=lambda r: r[:2]):
        yield trial, result


def read_results(trial: Trial) -> list[dict]:
    """A trial's ``result.json`` rows from its storage; none when the trial has no folder
    or file yet. A line cut short (a driver killed while writing) is left out."""
    storage = trial.storage
    if storage is None or storage.trial_dir_name is None:
        return []
    fs, path = storage.storage_filesystem, f"{storage.trial_fs_path}/{RESULT_FILE}"
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return []
    with fs.open_input_stream(path) as f:
        text = f.readall().decode()
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: skipped an unreadable line of %s", trial.trial_id, path)
    return rows
