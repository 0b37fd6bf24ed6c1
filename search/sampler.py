"""A sampler per group: each backbone tuned from its own trials only.

One TPE over a study that holds both backbones fits the shared parameters (ArcFace scale,
losses, scheduler) to all good trials, which are mostly the stronger backbone's, so the
weaker one is tuned with the stronger one's settings. ``GroupedSampler`` gives each value
of a categorical key (``tune.balance``, else ``model.backbone`` when searched) a sampler of
its own, which sees that value's trials only (``GroupView``): a trial is sampled from a
model of its own backbone. The key itself is drawn first: fixed by ``tune.balance`` (an
enqueued value), or by ``chooser``, a sampler over the whole study.

Optuna asks a sampler for a trial's relative (multivariate) parameters before the trial's
first parameter is drawn, when its group is not known yet. So this sampler offers no
relative space to Optuna, and instead asks the group's sampler for the relative sample of
the trial at the first parameter after the key, and hands its values out one by one.

Light: Optuna only (no Ray, no torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


def group_of(trial: FrozenTrial, key: str) -> Any:
    """The trial's value of ``key``: drawn, or fixed for it (a queued trial not begun)."""
    if key in trial.params:
        return trial.params[key]
    return trial.system_attrs.get("fixed_params", {}).get(key)


class GroupView:
    """The study as one group's sampler sees it: the trials whose ``key`` is ``value``."""

    def __init__(self, study: optuna.Study, key: str, value: Any):
        self._study, self._key, self._value = study, key, value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _mine(self, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        return [t for t in trials if group_of(t, self._key) == self._value]

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False):
        return self._mine(self._study._get_trials(deepcopy, states, use_cache))

    def get_trials(self, deepcopy: bool = True, states=None):
        return self._mine(self._study.get_trials(deepcopy=deepcopy, states=states))

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class GroupedSampler(BaseSampler):
    """``make(seed)`` builds each group's sampler (seeded per group, in ``values`` order) and
    the ``chooser`` of the key itself (when no balance fixes it)."""

    def __init__(
        self, key: str, values: Sequence[Any], make: Callable[[int], BaseSampler], seed: int
    ):
        self.key = key
        self.values = list(values)
        self.samplers = {v: make(seed + 1 + i) for i, v in enumerate(self.values)}
        self.chooser = optuna.samplers.TPESampler(seed=seed, n_startup_trials=len(self.values))
        self._relative: dict[int, dict[str, Any]] = {}  # trial id -> its group's relative draw

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def sample_independent(self, study, trial, name: str, distribution: BaseDistribution):
        if name == self.key:
            return self.chooser.sample_independent(study, trial, name, distribution)
        value = group_of(trial, self.key)
        if value not in self.samplers:
            raise RuntimeError(f"{name} drawn before {self.key}: the key must come first")
        sampler, view = self.samplers[value], GroupView(study, self.key, value)
        drawn = self._relative_draw(sampler, view, trial)
        if name in drawn and distribution._contains(distribution.to_internal_repr(drawn[name])):
            return drawn[name]
        return sampler.sample_independent(view, trial, name, distribution)

    def _relative_draw(self, sampler: BaseSampler, view: GroupView, trial) -> dict[str, Any]:
        if trial._trial_id not in self._relative:
            space = sampler.infer_relative_search_space(view, trial)
            space.pop(self.key, None)
            self._relative[trial._trial_id] = sampler.sample_relative(view, trial, space)
        return self._relative[trial._trial_id]

    def before_trial(self, study, trial) -> None:
        self._relative.pop(trial._trial_id, None)

    def after_trial(self, study, trial, state: TrialState, values) -> None:
        self._relative.pop(trial._trial_id, None)
        value = group_of(trial, self.key)
        if value in self.samplers:
            view = GroupView(study, self.key, value)
            self.samplers[value].after_trial(view, trial, state, values)

    def reseed_rng(self) -> None:
        for sampler in (self.chooser, *self.samplers.values()):
            sampler.reseed_rng()
