"""The strategy factory (search.strategy): rungs set directly, the best-so-far objective,
and TuneLoop, which drives the searcher and scheduler in Tune's order without Tune."""

from __future__ import annotations

import dataclasses
import math

import pytest
import yaml

from handreid.errors import ConfigError
from search.objective import best_so_far
from search.space import load_space
from tests.conftest import REPO

pytest.importorskip("ray.tune.search.optuna")

from search.strategy import TuneLoop, build_scheduler, build_searcher  # noqa: E402

SEARCH = {
    "optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "loss.arcface.margin": {"type": "float", "low": 0.1, "high": 0.5},
}


def space_with(tmp_path, scheduler: dict):
    doc = {
        "base": str(REPO / "spaces" / "base" / "tiny.yml"),
        "search": SEARCH,
        "tune": {"seed": 0, "n_startup_trials": 2, "scheduler": {"type": "asha", **scheduler}},
    }
    path = tmp_path / "space.yml"
    path.write_text(yaml.safe_dump(doc))
    return load_space(path)


def test_best_so_far_is_the_running_best_of_finite_values():
    got = best_so_far([float("nan"), 0.2, 0.1, 0.4, float("inf"), 0.3], "max")
    assert math.isnan(got[0]) and got[1:] == [0.2, 0.2, 0.4, 0.4, 0.4]
    assert best_so_far([3, 1, 2], "min") == [3, 1, 1]


def test_one_rung_is_said_directly(tmp_path):
    space = space_with(tmp_path, {"rungs": [10], "reduction_factor": 3, "max_epochs": 30})
    assert space.tune.rungs == (10,) and space.tune.milestones(30) == [10]
    scheduler = build_scheduler(space, metric="objective", mode="max")
    assert [m for m, _ in scheduler._brackets[0]._rungs] == [10]
    # Ray's own spelling of the same schedule lists max_t as a rung too
    ray_way = space_with(tmp_path, {"grace_period": 10, "reduction_factor": 3, "max_epochs": 30})
    assert ray_way.tune.milestones(30) == [10]


@pytest.mark.parametrize(
    "scheduler, message",
    [
        ({"rungs": [10], "grace_period": 10}, "rungs or grace_period, not both"),
        ({"rungs": [10, 5]}, "strictly ascending"),
        ({"rungs": [0]}, "epochs >= 1"),
        ({"rungs": [12], "max_epochs": 12}, "before max_epochs"),
    ],
)
def test_bad_rungs_are_named(tmp_path, scheduler, message):
    with pytest.raises(ConfigError, match=message) as err:
        space_with(tmp_path, scheduler)
    assert "tune.scheduler.rungs" in str(err.value) or "tune.rungs" in str(err.value)


def test_brackets_with_rungs_drop_the_first_ones(tmp_path):
    space = space_with(
        tmp_path, {"rungs": [3, 6, 9], "reduction_factor": 2, "brackets": 2, "max_epochs": 12}
    )
    scheduler = build_scheduler(space, metric="objective", mode="max")
    assert [[m for m, _ in b._rungs] for b in scheduler._brackets] == [[9, 6, 3], [9, 6]]


def run_loop(space, concurrent: int, trials: int, epochs: int = 6):
    """Trials reporting one epoch each in turn, ``concurrent`` at a time; values rise with
    the margin, so the scheduler has something to cut."""
    loop = TuneLoop(
        build_searcher(space, seed=0),
        build_scheduler(space, metric="objective", mode="max"),
        max_concurrent=concurrent,
    )
    running: dict[str, list] = {}
    started = ended = 0
    log = []
    while ended < trials:
        while started < trials and (new := loop.start()) is not None:
            trial_id, config = new
            running[trial_id] = [config["loss.arcface.margin"], 0]
            started += 1
        assert len(running) <= concurrent
        for trial_id in list(running):
            margin, epoch = running[trial_id]
            epoch += 1
            running[trial_id][1] = epoch
            done = epoch == epochs
            result = {"epoch": epoch, "objective": margin * epoch, "status": "running"}
            if done:
                result["status"] = "done"
            go_on = loop.report(trial_id, result)
            if not go_on or done:
                loop.end(trial_id)
                log.append((trial_id, epoch))
                del running[trial_id]
                ended += 1
    return loop, log


def test_the_loop_keeps_the_concurrency_and_tells_optuna_each_ending(tmp_path):
    space = space_with(tmp_path, {"rungs": [2], "reduction_factor": 2, "max_epochs": 6})
    space = dataclasses.replace(space, tune=dataclasses.replace(space.tune, max_epochs=6))
    loop, log = run_loop(space, concurrent=3, trials=12)
    study = loop.search.searcher._ot_study
    states = [t.state.name for t in study.trials]
    assert len(study.trials) == 12 and set(states) == {"COMPLETE", "PRUNED"}
    assert {e for _, e in log} == {2, 6}  # stopped at the rung, or ran to the end
    assert states.count("COMPLETE") == sum(e == 6 for _, e in log)
    assert not loop.search.live_trials  # every trial ended through the limiter


def test_promote_top_cuts_against_the_best_seen_at_the_rung(tmp_path):
    """Rising values pass ASHA's top third of the earlier, worse ones; with promote_top 2
    only a value among the best two recorded at the rung goes on."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    decisions = {}
    for top in (None, 2):
        space = space_with(tmp_path, {"rungs": [2], "reduction_factor": 3, "max_epochs": 6})
        space.tune = dataclasses.replace(space.tune, promote_top=top)
        scheduler = build_scheduler(space, metric="objective", mode="max")
        out = []
        for i, value in enumerate([1.0, 2.0, 3.0, 5.0, 4.0, 3.8]):
            trial = Trial("t", config={}, trial_id=f"t{i}", stub=True)
            scheduler.on_trial_add(None, trial)
            result = {"epoch": 2, "objective": value}
            out.append(scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP)
        decisions[top] = out
    assert decisions[None] == [False] * 6  # 3.8 beats two thirds of 1, 2, 3, 5, 4
    assert decisions[2] == [False] * 5 + [True]  # but not 5 or 4
