from __future__ import annotations

from handreid.train import trainer
from handreid.train.cli import main
from tests.conftest import TINY_YML


def _argv(out, *extra: str) -> list[str]:
    sets = {
        "data.synth.ids": 8,
        "data.synth.per_id": 4,
        "train.epochs": 1,
        "train.stage1_epochs": 1,
        "train.stage1_cache": out.parent / "s1",
    }
    argv = ["--config", str(TINY_YML), "--out", str(out), "--cpu", *extra]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    return argv


def test_a_finished_run_is_reported_complete_not_scored_again(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(_argv(out)) == 0
    metrics = out / "metrics.json"
    first = metrics.stat().st_mtime_ns
    capsys.readouterr()

    def no_eval(*args, **kwargs):
        raise AssertionError("the test set was scored again")

    monkeypatch.setattr(trainer, "evaluate_test", no_eval)
    monkeypatch.setattr(trainer.Trainer, "fit", no_eval)
    assert main(_argv(out)) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "complete" in printed[0] and str(metrics) in printed[0]
    assert metrics.stat().st_mtime_ns == first

    # another configuration in that directory is still refused
    assert main(_argv(out, "--set", "optim.lr_visual=0.01")) == 2
    assert "different configuration" in capsys.readouterr().err


def test_a_finished_run_without_test_scores_is_scored_when_asked(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(_argv(out, "--no-test")) == 0
    assert main(_argv(out, "--no-test")) == 0
    assert "complete" in capsys.readouterr().out
    calls = []
    real = trainer.evaluate_test
    monkeypatch.setattr(
        trainer, "evaluate_test", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    assert main(_argv(out)) == 0  # the test set was never scored: score it now
    assert calls == [1] and "splits" in capsys.readouterr().out
