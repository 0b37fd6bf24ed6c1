"""Early stopping never counts the warm-up nor the epochs before the search's judge point:
the rule ASHA's rungs follow, so an early-stopped trial has always run past its warm-up."""

from __future__ import annotations

import pytest
import yaml

from handreid.errors import ConfigError
from handreid.train.early_stopping import bad_epochs, first_judged_epoch, should_stop
from handreid.train.optim import warmup_epochs
from handreid.train.trainer import train
from search.space import load_space
from tests.conftest import REPO, TINY_YML, tiny_overrides
from tests.test_train import scripted_curve


def stop_epoch(curve, patience, from_epoch):
    """The epoch a run with this validation curve stops at (None: it runs to the end)."""
    return next(
        (e for e in range(1, len(curve) + 1) if should_stop(curve[:e], patience, from_epoch)),
        None,
    )


@pytest.mark.parametrize(
    "warmup, share, epochs, first",
    [(0, 0, 30, 1), (9.0, 0, 30, 10), (2.5, 0, 10, 3), (0, 0.5, 10, 5), (3, 0.2, 10, 4)],
)
def test_the_first_judged_epoch_is_past_the_warm_up_and_the_share(warmup, share, epochs, first):
    assert first_judged_epoch(warmup, share, epochs) == first


def test_bad_epochs_count_only_from_the_first_judged_epoch():
    curve = [0.5, 0.4, 0.3, 0.3, 0.3]
    assert [bad_epochs(curve[:e], 1) for e in range(1, 6)] == [0, 1, 2, 3, 4]
    assert [bad_epochs(curve[:e], 4) for e in range(1, 6)] == [0, 0, 0, 1, 2]
    assert bad_epochs([0.5, 0.4, 0.6, 0.5], 2) == 1  # a new best resets the count
    assert not should_stop([0.5] + [0.1] * 20, 0, 1)  # patience 0: never


def test_early_stopping_judges_the_epochs_asha_judges():
    pytest.importorskip("ray.tune")
    from search.scheduler import in_warmup

    for warmup in (0.0, 2.5, 3.0, 9.0):
        for share in (0.0, 0.1, 0.3, 0.5):
            for epochs in (10, 12, 30):
                result = {"warmup_epochs": warmup, "judge_from_epoch": share * epochs}
                judged = [
                    e for e in range(1, epochs + 1) if not in_warmup(result | {"epoch": e}, "epoch")
                ]
                assert judged[0] == first_judged_epoch(warmup, share, epochs)


@pytest.mark.parametrize("name", ["vitb16", "rn50", "compare"])
def test_a_real_space_with_a_onecycle_warm_up_dip_stops_only_past_the_warm_up(name):
    """The real spaces (patience 5, 30 epochs): a high learning rate peaks at epoch 1 and dips
    through OneCycle's 9-epoch warm-up, then stays below. Before, the trial stopped at epoch
    6 and counted as complete; now no earlier than epoch 14 (5 bad epochs past the warm-up)."""
    cfg = load_space(REPO / "spaces" / f"{name}.yml").trial_config({"optim.scheduler": "onecycle"})
    t = cfg.train
    warmup = warmup_epochs(cfg.optim.scheduler, cfg.optim.warmup_epochs, t.epochs)
    assert (warmup, t.patience, t.epochs) == (9.0, 5, 30)
    curve = [60.0] + [40.0 + e for e in range(8)] + [55.0] * 21  # below epoch 1 to the end
    first = first_judged_epoch(warmup, t.patience_after, t.epochs)
    assert stop_epoch(curve, t.patience, 1) == 6  # the rule before
    assert stop_epoch(curve, t.patience, first) == 14 > warmup


def write_space(tmp_path, judge_after, **fixed):
    doc = {
        "base": str(TINY_YML),
        "fixed": {**tiny_overrides(), **fixed},
        "search": {"optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "tune": {"scheduler": {"type": "asha", "judge_after": judge_after}},
    }
    path = tmp_path / "space.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_space(path)


def test_a_trial_config_waits_for_the_space_judge_point(tmp_path):
    space = write_space(tmp_path, 0.5)
    assert space.trial_config({}, {}).train.patience_after == 0.5
    later = write_space(tmp_path, 0.5, **{"train.patience_after": 0.7})
    assert later.trial_config({}, {}).train.patience_after == 0.7  # the config's own, later


def test_a_tiny_search_trial_with_a_warm_up_dip_stops_after_the_judge_point(tmp_path, monkeypatch):
    """The tiny space, OneCycle over 10 epochs (warm-up 3), patience 2 and judge_after 0.5:
    a curve that dips in the warm-up and never recovers stops at epoch 6 (bad epochs 5, 6)."""
    fixed = {"optim.scheduler": "onecycle", "train.epochs": 10, "train.patience": 2}
    space = write_space(tmp_path, 0.5, **fixed, **{"train.stage1_cache": str(tmp_path / "s1")})
    scripted_curve(monkeypatch, [0.5, 0.4, 0.3] + [0.35] * 7)
    reports = []
    cfg = space.trial_config({"optim.lr_visual": 1e-3}, {})
    result = train(
        cfg, tmp_path / "run", report=lambda m, _: reports.append(m), evaluate_on_test=False
    )
    assert result["status"] == "early_stopped" and result["epochs"] == 6
    assert [r["status"] for r in reports] == ["running"] * 5 + ["early_stopped"]


def test_patience_after_must_be_a_share():
    from handreid.config import load_config

    with pytest.raises(ConfigError, match=r"train\.patience_after: must be in \[0, 1\)"):
        load_config(TINY_YML, {"train.patience_after": 1.0})
