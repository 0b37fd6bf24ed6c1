"""The search strategy, built in one place: the sampler, the searcher and the scheduler.

``build_tuner``, the confirmation stage and the benchmarks all call these, so a change to
the strategy reaches every one of them. Light: Optuna and Ray Tune's search and scheduler
classes, no torch.
"""

from __future__ import annotations

from typing import Any

import optuna

from search.sampler import GroupedSampler
from search.space import SearchSpace


def tpe(seed: int, n_startup_trials: int) -> optuna.samplers.BaseSampler:
    # group=True: TPE models each conditional sub-space on its own
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, n_startup_trials=n_startup_trials
    )


def build_sampler(space: SearchSpace, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """TPE; with a group key (the backbone), one TPE per backbone over its own trials, each
    with its own ``n_startup_trials`` random trials first."""
    seed = space.tune.seed if seed is None else seed
    startup = space.tune.n_startup_trials
    group = space.group_key()
    if group is None:
        return tpe(seed, startup)
    key, values = group
    return GroupedSampler(key, values, lambda s: tpe(s, startup), seed)


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
    return ResumableASHA(
        time_attr="epoch",
        metric=metric,
        mode=mode,
        max_t=space.max_epochs,
        grace_period=t.grace_period,
        reduction_factor=t.reduction_factor,
        brackets=t.brackets,  # > 1: asynchronous Hyperband, a hedge against late starters
        group_by=space.bracket_key(),  # e.g. rungs per backbone: cut against its own peers
    )
