"""The search strategy, built in one place: the sampler, the searcher and the scheduler.

``build_tuner`` and the benchmarks all call these, so a change to the strategy reaches
every one of them (the confirmation runs its trials without either). ``TuneLoop`` drives
them in the order Tune's controller does, for a loop that runs its own trials (a
benchmark), and ``best_so_far`` is the objective every trial reports. Light: Optuna and Ray
Tune's search and scheduler classes, no torch (``tune.sampler: gp`` imports it when it
first fits).
"""

from __future__ import annotations

from typing import Any

import optuna

from search.objective import best_so_far, judged_from
from search.sampler import GroupedSampler
from search.space import SearchSpace

__all__ = [
    "TuneLoop",
    "best_so_far",
    "build_sampler",
    "build_scheduler",
    "build_searcher",
    "judged_from",
    "model",
    "tpe",
]


def tpe(seed: int, n_startup_trials: int) -> optuna.samplers.BaseSampler:
    # group=True: TPE models each conditional sub-space on its own. Optuna 5's constant liar
    # (on by default: running trials count as bad, so that trials started together differ)
    # stays on (BENCHMARKS.md's "constant liar" line measured this default, not a change)
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, n_startup_trials=n_startup_trials
    )


def model(kind: str, seed: int, n_startup_trials: int) -> optuna.samplers.BaseSampler:
    """The sampler ``tune.sampler`` names, with ``n_startup_trials`` random trials first."""
    if kind == "tpe":
        return tpe(seed, n_startup_trials)
    if kind == "independent-tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=False, n_startup_trials=n_startup_trials
        )
    if kind == "gp":
        # fits complete trials only (a pruned trial's early value is not the objective), so
        # unlike TPE it does not learn from a diverged trial (told PRUNED) to avoid its
        # region; a parameter that only some trials have (a conditional one) and the first
        # trials are drawn by a one-parameter TPE instead, quietly
        return optuna.samplers.GPSampler(
            seed=seed,
            n_startup_trials=n_startup_trials,
            independent_sampler=model("independent-tpe", seed, n_startup_trials),
            warn_independent_sampling=False,
        )
    raise ValueError(f"unknown sampler {kind!r}")


def build_sampler(space: SearchSpace, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """``tune.sampler``; with a group key (the backbone), one per backbone over its own
    trials, each with its own ``n_startup_trials`` random trials first."""
    seed = space.tune.seed if seed is None else seed
    kind, startup = space.tune.sampler, space.tune.n_startup_trials
    group = space.group_key()
    if group is None:
        return model(kind, seed, startup)
    key, values = group
    return GroupedSampler(key, values, lambda s: model(kind, s, startup), seed)


def build_searcher(
    space: SearchSpace,
    *,
    seed: int | None = None,
    study_name: str | None = None,
    storage: Any = None,
    sampler: optuna.samplers.BaseSampler | None = None,
):
    """The search's Optuna searcher, as Tune drives it (``suggest``, ``on_trial_result``,
    ``on_trial_complete``); ``storage`` None keeps the study in memory."""
    from search.optuna_search import HandReIDOptunaSearch

    t = space.tune
    return HandReIDOptunaSearch(
        space=space.define_by_run,
        metric="objective",
        mode=t.mode,
        points_to_evaluate=space.optuna_points(),
        sampler=sampler or build_sampler(space, seed),
        study_name=study_name,
        storage=storage,
        metric_name=t.metric,
        balance=space.balanced(),
    )


def build_scheduler(space: SearchSpace, *, metric: str | None = None, mode: str | None = None):
    """ASHA that rebuilds its rungs on resume, rungs per backbone; ``metric``/``mode`` only
    when no Tuner passes them (a benchmark driving it directly)."""
    from search.scheduler import ResumableASHA

    t = space.tune
    rungs = t.milestones(space.max_epochs) if t.rungs is not None else None
    return ResumableASHA(
        time_attr="epoch",
        metric=metric,
        mode=mode,
        max_t=space.max_epochs,
        grace_period=rungs[0] if rungs else t.grace_period,
        reduction_factor=t.reduction_factor,
        brackets=t.brackets,  # > 1: asynchronous Hyperband, a hedge against late starters
        group_by=space.bracket_key(),  # e.g. rungs per backbone: cut against its own peers
        milestones=rungs,  # tune.scheduler.rungs: the rungs' epochs as the space says them
        promote_top=t.promote_top,  # and the cut against the best seen at a rung
    )


class TuneLoop:
    """The searcher behind Tune's ``ConcurrencyLimiter`` and the scheduler, called as Tune's
    controller calls them (``ray.tune.execution.tune_controller``): a result goes to the
    scheduler first and, unless it stops the trial, then to the searcher; a trial's end goes
    to the scheduler, then to the searcher, with its last result. Trials are Tune's own
    ``Trial`` objects (stubs: no trainable behind them), ids as Tune names them.

    For a loop that runs its trials itself, as many at once as it likes up to
    ``max_concurrent``: ``start`` a trial, ``report`` each of its results, ``end`` it.
    """

    def __init__(self, searcher, scheduler=None, *, max_concurrent: int, tag: str = "00000"):
        from ray.tune.search import ConcurrencyLimiter

        self.search = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
        self.scheduler = scheduler
        self.tag = tag  # Tune's trial ids: a random experiment tag and a counter
        self._trials: dict[str, Any] = {}
        self._last: dict[str, dict] = {}
        self._count = 0

    def start(self) -> tuple[str, dict] | None:
        """A new trial's id and parameters; None while ``max_concurrent`` trials run."""
        from ray.tune.experiment import Trial
        from ray.tune.search import Searcher

        trial_id = f"{self.tag}_{self._count:05d}"
        config = self.search.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return None
        self._count += 1
        trial = Trial("loop", config=config, trial_id=trial_id, stub=True)
        if self.scheduler is not None:
            self.scheduler.on_trial_add(None, trial)
        self._trials[trial_id] = trial
        return trial_id, config

    def report(self, trial_id: str, result: dict) -> bool:
        """One result of a running trial; False when the scheduler stops it (then ``end``)."""
        from ray.tune.schedulers import TrialScheduler

        decision = TrialScheduler.CONTINUE
        if self.scheduler is not None:
            decision = self.scheduler.on_trial_result(None, self._trials[trial_id], result)
        self._last[trial_id] = result
        if decision == TrialScheduler.STOP:
            return False
        self.search.on_trial_result(trial_id, result)
        return True

    def end(self, trial_id: str) -> None:
        """The trial ended (stopped, or its run returned) with the last result it reported."""
        trial, result = self._trials.pop(trial_id), self._last.pop(trial_id, {})
        if self.scheduler is not None:
            self.scheduler.on_trial_complete(None, trial, result)
        self.search.on_trial_complete(trial_id, result=result)
