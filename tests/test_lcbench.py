"""bench.lcbench's search loop on synthetic learning curves, without the yahpo venv: the
budget, the concurrency, what counts as the incumbent, the regret and compute figures, and
the task choice (held-out tasks refused)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import lcbench

pytest.importorskip("ray.tune.search.optuna")

BUDGET = lcbench.EPOCHS * 6  # six full trials: a small search


def synthetic_curve(config: dict) -> list[float]:
    """A best-so-far accuracy curve: the level peaks at learning rate 1e-2, the speed grows
    with the batch size's inverse, so early epochs rank the final values only roughly."""
    level = 90 - 8 * abs(math.log10(config["learning_rate"]) + 2) - 5 * config["max_dropout"]
    speed = 3 + 200 / config["batch_size"]
    raw = [level * (1 - math.exp(-e / speed)) for e in range(1, lcbench.EPOCHS + 1)]
    return [float(v) for v in np.maximum.accumulate(raw)]


class Counting(lcbench.Strategy):
    """Wraps a strategy and records how many of its trials run at once."""

    def __init__(self, inner: lcbench.Strategy):
        self.inner, self.live, self.most = inner, set(), 0

    def ask(self):
        asked = self.inner.ask()
        if asked is not None:
            self.live.add(asked[0])
            self.most = max(self.most, len(self.live))
        return asked

    def report(self, trial_id, epoch, objective, last):
        return self.inner.report(trial_id, epoch, objective, last)

    def end(self, trial_id):
        self.live.discard(trial_id)
        self.inner.end(trial_id)


@pytest.mark.parametrize("name", ["shipped", "random + ASHA", "Optuna TPE + Hyperband"])
def test_a_search_keeps_its_budget_and_concurrency(name):
    space = lcbench.lcbench_space()
    strategy = Counting(lcbench.STRATEGIES[name](space, 0, 4, None))
    trials = lcbench.run_search(strategy, synthetic_curve, BUDGET, 4)
    spent = sum(t.epochs for t in trials)
    assert spent <= BUDGET and trials[-1].at <= BUDGET
    assert strategy.most == 4
    assert any(t.complete for t in trials) and any(not t.complete for t in trials)  # pruned
    assert all(t.complete == (t.epochs == lcbench.EPOCHS) for t in trials)


def test_the_shipped_rung_is_the_shipped_space_share_of_52_epochs():
    space = lcbench.lcbench_space()  # spaces/vitb16.yml: one rung at 10 of 30 epochs
    assert space.tune.milestones(space.max_epochs) == [17] and space.max_epochs == 52


def test_the_shipped_strategy_samples_as_the_shipped_space_says():
    from search.space import load_space

    space = lcbench.lcbench_space()
    shipped = load_space(lcbench.SHIPPED_SPACE).tune
    assert space.tune.sampler == shipped.sampler == "gp"
    assert space.tune.n_startup_trials == shipped.n_startup_trials
    strategy = lcbench.STRATEGIES["shipped"](space, 0, 4, None)
    assert type(strategy.loop.search.searcher._sampler).__name__ == "GPSampler"


def test_only_full_trials_are_incumbents_and_regret_follows_them():
    trials = [
        lcbench.Finished(epochs=17, complete=False, value=99.0, at=20),
        lcbench.Finished(epochs=52, complete=True, value=80.0, at=60),
        lcbench.Finished(epochs=52, complete=True, value=70.0, at=70),
        lcbench.Finished(epochs=52, complete=True, value=90.0, at=100),
    ]
    assert lcbench.incumbents(trials) == [(60, 80.0), (100, 90.0)]
    ref = lcbench.Reference(best=100.0, median=60.0, mean=50.0)
    curve = lcbench.regret_curve(trials, ref, 120)
    assert curve[58] == pytest.approx(1.25) and curve[59] == pytest.approx(0.5)  # mean, then 80
    assert curve[-1] == pytest.approx(0.25)
    assert lcbench.compute_to_reach(curve, 0.5) == 60
    assert math.isinf(lcbench.compute_to_reach(curve, 0.1))


def test_the_tasks_are_the_documented_draw_and_none_is_held_out():
    assert tuple(lcbench.draw_tasks()) == lcbench.TASKS
    assert not set(lcbench.TASKS) & set(lcbench.HELD_OUT)
    assert lcbench.main(["run", "--tasks", "167168", "--searches", "1"]) == 2


def test_a_variant_run_keeps_its_jobs_apart_from_the_shipped_settings():
    """``--resume`` reuses kept jobs by file name: a ``--tune`` variant must not lend its
    searches to a run of the shipped settings."""
    shipped, variant = lcbench.lcbench_space(), lcbench.lcbench_space(sampler="tpe")
    job = lcbench.Job("146212", "shipped", [0, 1], 4, shipped)
    assert job.key == lcbench.Job("146212", "shipped", [0, 1], 4, lcbench.lcbench_space()).key
    assert job.key != lcbench.Job("146212", "shipped", [0, 1], 4, variant).key
