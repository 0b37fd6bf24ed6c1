"""What the search prints per trial, and its progress bar's count."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")

from search.progress import TrialSummary, trial_line  # noqa: E402


def trial(tid: str, state: str, **result) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, status=state, last_result=result)


def test_one_line_per_trial_says_how_it_ended():
    done = {"status": "done", "epoch": 12, "objective": 41.234, "backbone": "tiny-rn"}
    assert trial_line("a1", {**done, "time_total_s": 6.2}, "val_mAP") == (
        "trial a1  tiny-rn    best val_mAP  41.23  complete, 12 epochs, 6 s"
    )
    pruned = {"status": "running", "epoch": 6, "objective": 30.0, "backbone": "tiny-vit"}
    assert "pruned at epoch 6" in trial_line("b2", pruned, "val_mAP")
    diverged = {"status": "diverged", "error": "non-finite loss", "epoch": 2}
    line = trial_line("c3", diverged, "val_mAP")
    assert "best val_mAP      -  failed" in line and "[diverged: non-finite loss]" in line


def test_the_bar_counts_the_trial_being_reported(capsys):
    summary = TrialSummary("val_mAP", total=3, bar=True)
    summary.setup(total_num_samples=3)
    summary.bar.fp = io.StringIO()  # keep the bar off the test's terminal
    earlier = trial("a", "TERMINATED", status="done", epoch=4, objective=1.0)
    now = trial("b", "RUNNING", status="done", epoch=4, objective=2.0)  # Tune marks it later
    summary.on_trial_complete(0, [earlier, now], now)
    assert summary.bar.n == 2
    summary.on_experiment_end([earlier, now])
    assert summary.bar is None
