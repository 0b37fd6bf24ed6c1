"""Each backbone is tuned from its own trials (search.sampler.GroupedSampler), and balanced
trial counts stay equal after a lost driver."""

from __future__ import annotations

import statistics

import optuna
import pytest

from search.space import load_space
from tests.conftest import CENTER_LOSS, small_space

pytest.importorskip("ray.tune.search.optuna")

optuna.logging.set_verbosity(optuna.logging.WARNING)

SEARCH = {
    "model.backbone": {"type": "categorical", "choices": ["tiny-vit", "tiny-rn"]},
    "loss.arcface.scale": {"type": "float", "low": 10.0, "high": 40.0},
    "loss.arcface.margin": {"type": "float", "low": 0.1, "high": 0.5},
}
BEST_SCALE = {"tiny-vit": 10.0, "tiny-rn": 40.0}  # opposite optima
LEVEL = {"tiny-vit": 30.0, "tiny-rn": 50.0}  # tiny-rn scores 20 points higher


def objective(params: dict) -> float:
    backbone = params["model.backbone"]
    scale, margin = params["loss.arcface.scale"], params["loss.arcface.margin"]
    return LEVEL[backbone] - abs(scale - BEST_SCALE[backbone]) - 10 * abs(margin - 0.3)


def space(tmp_path, **tune):
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = {"num_samples": 60, "n_startup_trials": 5, **tune}
    return load_space(small_space(tmp_path, num_samples=60, search=SEARCH, tune=settings))


def run(searcher, n: int, start: int = 0) -> list[dict]:
    out = []
    for i in range(start, start + n):
        params = searcher.suggest(f"t{i:03d}")
        searcher.on_trial_complete(
            f"t{i:03d}", {"objective": objective(params), "epoch": 1, "status": "done"}
        )
        out.append(params)
    return out


def late_scales(trials: list[dict], backbone: str) -> list[float]:
    own = [t["loss.arcface.scale"] for t in trials if t["model.backbone"] == backbone]
    return own[len(own) // 2 :]  # the second half: after each group's random start


def test_the_weaker_backbone_is_tuned_on_its_own_terms(tmp_path):
    """Balanced over two backbones whose best ArcFace scales are opposite: the weaker
    backbone's later trials gather at its own optimum, as a study of it alone would. One
    TPE over both (the earlier sampler) drew them near the stronger one's (median ~37)."""
    from search.strategy import build_searcher

    for seed in (0, 1):
        s = space(tmp_path / f"s{seed}", balance="model.backbone", seed=seed)
        trials = run(build_searcher(s), 60)
        assert [t["model.backbone"] for t in trials].count("tiny-vit") == 30
        weak, strong = late_scales(trials, "tiny-vit"), late_scales(trials, "tiny-rn")
        assert statistics.median(weak) < 20, weak
        assert sum(x < 20 for x in weak) >= 0.6 * len(weak), weak
        assert statistics.median(strong) > 30, strong


def test_a_group_sampler_sees_only_its_own_trials(tmp_path):
    from search.sampler import GroupView

    study = optuna.create_study()
    for backbone in ("a", "b", "a"):
        study.enqueue_trial({"k": backbone})
    for _ in range(3):
        trial = study.ask()
        trial.suggest_categorical("k", ["a", "b"])
        study.tell(trial, 1.0)
    study.enqueue_trial({"k": "b"})  # queued, not begun: counts for its group
    view = GroupView(study, "k", "a")
    assert [t.number for t in view.trials] == [0, 2]
    assert [t.number for t in GroupView(study, "k", "b").get_trials()] == [1, 3]
    assert len(view._get_trials(deepcopy=False, states=None, use_cache=False)) == 2


def test_balance_counts_stay_equal_after_a_lost_driver(tmp_path):
    """A driver killed after the searcher asked a balanced trial that Tune's snapshot does
    not hold: on resume it is failed as lost and queued again. It must count once: 12 and
    12 trials that ran, not 13 and 11."""
    from search.resume import fail_lost_trials
    from search.rundir import study_storage
    from search.strategy import build_searcher

    s = space(tmp_path, balance="model.backbone")
    before = build_searcher(s, study_name="s", storage=study_storage(tmp_path))
    run(before, 9)
    before.suggest("t009")  # asked just before the driver died
    fail_lost_trials(tmp_path, requeue=True)
    after = build_searcher(s, study_name="s", storage=study_storage(tmp_path))
    run(after, 24 - 9, start=10)
    study = optuna.load_study(study_name="s", storage=study_storage(tmp_path))
    ran = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    counts = [t.params["model.backbone"] for t in ran]
    assert (counts.count("tiny-vit"), counts.count("tiny-rn")) == (12, 12)


def test_without_balance_the_backbone_is_still_chosen_and_grouped(tmp_path):
    """No balance: the backbone is drawn by a sampler over the whole study, and the rest
    of each trial from its backbone's own model."""
    from search.sampler import GroupedSampler
    from search.strategy import build_sampler, build_searcher

    s = space(tmp_path)
    assert isinstance(build_sampler(s), GroupedSampler)
    trials = run(build_searcher(s), 40)
    chosen = [t["model.backbone"] for t in trials]
    assert chosen.count("tiny-rn") > chosen.count("tiny-vit")  # it scores higher
    assert statistics.median(late_scales(trials, "tiny-rn")) > 30


CONDITIONAL = {**SEARCH, **CENTER_LOSS}


@pytest.mark.parametrize("kind", ["tpe", "independent-tpe", "gp"])
def test_each_sampler_setting_tunes_each_backbone_on_its_own(tmp_path, kind):
    """``tune.sampler`` is the model each backbone's sampler is. Each draws the conditional
    parameter exactly when its condition holds and gathers the weaker backbone's later
    trials at its own optimum."""
    from search.sampler import GroupedSampler
    from search.strategy import build_sampler, build_searcher

    tune = {"num_samples": 60, "n_startup_trials": 5, "balance": "model.backbone", "sampler": kind}
    s = load_space(small_space(tmp_path, num_samples=60, search=CONDITIONAL, tune=tune))
    sampler = build_sampler(s)
    assert isinstance(sampler, GroupedSampler)
    model = sampler.samplers["tiny-vit"]
    expected = optuna.samplers.GPSampler if kind == "gp" else optuna.samplers.TPESampler
    assert type(model) is expected
    if kind != "gp":
        assert model._multivariate is (kind == "tpe")
    trials = run(build_searcher(s), 60)
    for t in trials:
        assert ("loss.center.weight" in t) == t["loss.center.use"], t
    weak = late_scales(trials, "tiny-vit")
    assert statistics.median(weak) < 20, weak
    assert statistics.median(late_scales(trials, "tiny-rn")) > 30


def test_an_unknown_sampler_is_refused_in_one_line(tmp_path):
    from handreid.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        space(tmp_path, sampler="bayes")
    message = str(err.value)
    assert "tune.sampler" in message and "bayes" in message and "\n" not in message


def test_a_gp_searcher_goes_on_after_it_is_pickled_and_restored(tmp_path):
    """Tune saves the searcher by pickling it and a resumed search unpickles it: a GP
    searcher whose models have been fitted must come back and go on fitting."""
    import pickle

    from search.rundir import study_storage
    from search.strategy import build_searcher

    tune = {"num_samples": 16, "n_startup_trials": 2, "balance": "model.backbone", "sampler": "gp"}
    s = load_space(small_space(tmp_path, num_samples=16, search=CONDITIONAL, tune=tune))
    before = build_searcher(s, study_name="s", storage=study_storage(tmp_path))
    run(before, 10)
    assert before._sampler.samplers["tiny-vit"]._gprs_cache_list is not None  # fitted
    after = pickle.loads(pickle.dumps(before))
    run(after, 6, start=10)
    study = optuna.load_study(study_name="s", storage=study_storage(tmp_path))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 16
    # the restored searcher's trials were proposed by the GP (it records its draw on the
    # trial), not by its start-up or fallback TPE
    by_gp = ["gp:relative_params:0" in t.system_attrs for t in study.trials[10:]]
    assert by_gp == [True] * 6
