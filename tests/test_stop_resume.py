"""Stopping a search with Ctrl-C or SIGTERM, and what ``--resume`` accepts and continues."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from ray import tune  # at collection: Ray's log handler must not bind to a test's capsys

from tests.conftest import (
    FINAL,
    REPO,
    SEARCH_ENV,
    STATES,
    record_fault,
    replayed_epochs,
    search_command,
    small_space,
    trial_results,
)


def load_study(run_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(
        study_name=f"handreid-{name}", storage=f"sqlite:///{run_dir / 'study.db'}"
    )


def space_file(tmp_path: Path, num_samples: int, max_epochs: int) -> Path:
    return small_space(
        tmp_path,
        num_samples=num_samples,
        max_epochs=max_epochs,
        fixed={"data.synth.ids": 16, "model.backbone": "tiny-rn"},
        search={"optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    )


def signal_search_when(cmd, run_dir: Path, ready, signum, timeout: float = 240):
    """Start a search, send ``signum`` to its process (not its group: Ctrl-C reaches Ray's
    processes too, but they block SIGINT) once ``ready(results)``; returns the completed
    process and the trial results as they were at the signal."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, **SEARCH_ENV},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + timeout
    while not ready(trial_results(run_dir)):
        if time.time() > deadline or proc.poll() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"the search did not get going (or ended first): {err[-2000:]}")
        time.sleep(0.2)
    before = trial_results(run_dir)
    os.kill(proc.pid, signum)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the search did not stop within 120 s of the signal")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), before


def started_one(res) -> bool:
    """A trial has started but reported nothing yet: it is still running at the signal."""
    return any(not rows for rows in res.values())


def one_in_flight(res) -> bool:
    """A trial finished, and another one is running."""
    return started_one(res) and any(rows and rows[-1]["status"] in FINAL for rows in res.values())


def check_stopped(out, cmd, run_dir: Path, code: int, name: str) -> None:
    """Stopped cleanly: the exit code, one line with the resume command, nothing wrapped up."""
    assert out.returncode == code, out.stderr[-3000:]
    hints = [line for line in out.stderr.splitlines() if "resume" in line.lower()]
    resume = shlex.join(["handreid-search", *cmd[3:], "--resume"])
    assert hints == [
        f"stopped by {name} before the search finished (state saved in {run_dir}); "
        f"resume with: {resume}"
    ], out.stderr[-3000:]
    assert "best configuration" not in out.stdout
    for written in ("best", "trials.csv", "report"):  # no test scoring, no summaries
        assert not (run_dir / written).exists(), written
    states = {t.state.name for t in load_study(run_dir, run_dir.name).trials}
    assert "RUNNING" in states and "FAIL" not in states  # in-flight trials are kept open


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_keeps_study_and_table_in_step(tmp_path):
    space = space_file(tmp_path, num_samples=5, max_epochs=2)
    cmd = search_command(space, tmp_path / "runs", "c")
    run_dir = tmp_path / "runs" / "c"
    out, before = signal_search_when(cmd, run_dir, one_in_flight, signal.SIGINT)
    check_stopped(out, cmd, run_dir, 130, "SIGINT")
    open_at_stop = {t.number for t in load_study(run_dir, "c").trials if t.state.name == "RUNNING"}

    resumed = subprocess.run(
        cmd + ["--resume"],
        cwd=REPO,
        env={**os.environ, **SEARCH_ENV},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    table = pd.read_csv(run_dir / "trials.csv", dtype={"trial_id": str})
    assert len(table) == 5 and table["trial_id"].is_unique
    assert set(trial_results(run_dir)) == {f"trial_{t}" for t in table["trial_id"]}
    study = {t.user_attrs["ray_trial_id"]: t for t in load_study(run_dir, "c").trials}
    assert set(study) == set(table["trial_id"])  # one study trial per row, none extra
    for row in table.itertuples():
        assert study[row.trial_id].state.name == STATES[row.status], row
    assert set(table["status"]) <= {"complete", "pruned"}  # nothing marked FAIL
    # the trials open at the stop ended on their own study trials, as Tune continued them
    ended = {t.number: t.state.name for t in study.values()}
    assert all(ended[n] in ("COMPLETE", "PRUNED") for n in open_at_stop)
    for trial, rows in before.items():  # finished trials were not rerun
        if rows and rows[-1]["status"] in FINAL:
            assert trial_results(run_dir)[trial] == rows
    assert (run_dir / "best").is_dir()
    record_fault(
        "Ctrl-C (SIGINT) mid-search, then --resume",
        trials=len(table),
        finished_before=sum(bool(r) and r[-1]["status"] in FINAL for r in before.values()),
        lost=0,  # asserted above: every trial once, in step with the study
        duplicated_trials=0,
        epochs_replayed=replayed_epochs(trial_results(run_dir)),
    )


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c(tmp_path):
    space = space_file(tmp_path, num_samples=4, max_epochs=2)
    cmd = search_command(space, tmp_path / "runs", "t")
    run_dir = tmp_path / "runs" / "t"
    out, _ = signal_search_when(cmd, run_dir, started_one, signal.SIGTERM)
    check_stopped(out, cmd, run_dir, 143, "SIGTERM")


# ------------------------------------------------------------------ resume refusals, no Ray


def started(tmp_path: Path, **space_kw) -> tuple[Path, Path]:
    """A run folder as a search leaves it (its search.json), and the space it started with."""
    from search.rundir import SearchOptions, write_search_meta
    from search.space import load_space
    from search.tune_state import TUNER_FILE

    folder = tmp_path / "first"
    folder.mkdir()
    space = small_space(folder, num_samples=4, **space_kw)
    write_search_meta(load_space(space), SearchOptions(name="r", storage=str(tmp_path / "runs")))
    (tmp_path / "runs" / "r" / TUNER_FILE).touch()  # past the CLI's "nothing to resume"
    return space, tmp_path / "runs"


def resume(space: Path, storage: Path, capsys, *flags: str) -> tuple[int, str]:
    from search.cli import main

    args = ["--space", str(space), "--storage", str(storage), "--name", "r", "--quiet"]
    code = main([*args, "--resume", *flags])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"search": {"optim.lr_visual": {"type": "float", "low": 1e-4, "high": 0.1}}},
            "search.optim.lr_visual.high is 0.1 (was 0.01)",
        ),
        (
            {
                "search": {
                    "optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                    "optim.lr_heads": {"type": "float", "low": 1e-4, "high": 1e-2},
                }
            },
            "search.optim.lr_heads is new",
        ),
        ({"fixed": {"data.synth.ids": 16}}, "fixed.data.synth.ids is 16 (was 24)"),
        ({"max_epochs": 6}, "tune.max_epochs is 6 (was 4)"),
    ],
)
def test_resume_with_a_changed_space_is_refused_naming_the_change(
    tmp_path, capsys, change, message
):
    search = {"optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    first, storage = started(tmp_path, search=search)
    edited = tmp_path / "edited"
    edited.mkdir()
    changed = small_space(edited, num_samples=4, **{"search": search, **change})
    code, err = resume(changed, storage, capsys)
    assert code == 2
    assert err == (
        f"error: {changed}: {message}, unlike the space {first} that started "
        f"{storage.resolve() / 'r'}; resume with that space, or start a new search with --name"
    )


def test_resume_with_the_same_space_elsewhere_is_accepted(tmp_path, capsys, monkeypatch):
    _, storage = started(tmp_path)
    monkeypatch.setattr(tune.Tuner, "can_restore", classmethod(lambda cls, path: False))
    copy = tmp_path / "copy"
    copy.mkdir()
    code, err = resume(small_space(copy, num_samples=4), storage, capsys, "--num-samples", "4")
    assert code == 2  # past the checks; no Tune state in this folder to resume from
    assert err.startswith("error: nothing to resume at "), err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-samples", "6"], "--num-samples 6: the search was started with 4"),
        (["--max-concurrent", "3"], "--max-concurrent 3: the search was started with 2"),
    ],
)
def test_resume_refuses_a_changed_sample_count_or_concurrency(tmp_path, capsys, flags, message):
    space, storage = started(tmp_path)
    code, err = resume(space, storage, capsys, *flags)
    assert code == 2
    assert err == (
        f"error: {message} and a resume keeps it; start a new search with --name to change it"
    )


# ------------------------------------------------------------------ what a resume restores


class Restored(Exception):
    pass


@pytest.mark.parametrize("flags, retried", [([], False), (["--retry-failed"], True)])
def test_errored_trials_rerun_on_resume_only_with_retry_failed(
    tmp_path, capsys, monkeypatch, flags, retried
):
    import search.driver
    import search.resume

    calls = []

    def restore(path, **kw):
        calls.append(kw)
        raise Restored

    space, storage = started(tmp_path)
    monkeypatch.setattr(tune.Tuner, "can_restore", classmethod(lambda cls, path: True))
    monkeypatch.setattr(tune.Tuner, "restore", restore)
    monkeypatch.setattr(search.driver, "init_ray", lambda *a, **kw: None)
    monkeypatch.setattr(search.driver, "check_resources", lambda *a: None)
    monkeypatch.setattr(search.resume, "saved_trials", lambda path: [])
    monkeypatch.setattr(search.resume, "align_search_state", lambda path, trials: None)
    with pytest.raises(Restored):
        resume(space, storage, capsys, *flags)
    assert calls and calls[0]["resume_errored"] is retried
    assert calls[0]["resume_unfinished"] is True


def test_retry_failed_needs_resume(tmp_path, capsys):
    from search.cli import main

    space = small_space(tmp_path, num_samples=1)
    assert main(["--space", str(space), "--retry-failed"]) == 2
    assert capsys.readouterr().err.strip() == "error: --retry-failed applies to --resume only"


def test_resume_fails_only_the_study_trials_tune_will_not_continue(tmp_path):
    """A killed driver leaves study trials RUNNING: those whose Tune trial the restored
    state continues stay open for their results; the others are failed before Tune starts."""
    from search.resume import fail_lost_trials
    from search.rundir import study_storage

    study = optuna.create_study(study_name="handreid-o", storage=study_storage(tmp_path))
    for ray_id in ("continued", "lost", "done"):
        trial = study.ask()
        trial.set_user_attr("ray_trial_id", ray_id)
    study.tell(study.trials[2].number, 1.0)
    no_id = study.ask()  # killed between Optuna's ask and the Tune trial's creation
    assert fail_lost_trials(tmp_path, keep={"continued", "done"}) == 2
    trials = {t.number: t for t in load_study(tmp_path, "o").trials}
    assert [trials[n].state.name for n in range(4)] == ["RUNNING", "FAIL", "COMPLETE", "FAIL"]
    assert trials[1].user_attrs["fail_reason"] == "driver lost"
    assert trials[no_id.number].user_attrs["fail_reason"] == "driver lost"


def test_a_lost_start_point_is_queued_again_on_resume(tmp_path):
    """A start point asked just before the driver died (its Tune trial never saved) runs in
    the resumed search: failed as lost, then enqueued again ahead of TPE's own suggestions."""
    from search.resume import fail_lost_trials
    from search.rundir import study_storage

    study = optuna.create_study(study_name="handreid-q", storage=study_storage(tmp_path))
    study.enqueue_trial({"x": 0.25})
    study.enqueue_trial({"x": 0.75})
    for ray_id in ("continued", "lost"):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr("ray_trial_id", ray_id)
    sampled = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # not a start point
    sampled.set_user_attr("ray_trial_id", "sampled")
    assert fail_lost_trials(tmp_path, keep={"continued"}, requeue=True) == 2
    again = load_study(tmp_path, "q").ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert again.params == {"x": 0.75} and again.user_attrs["requeued_from"] == 1
    states = [t.state.name for t in load_study(tmp_path, "q").trials]
    assert states == ["RUNNING", "FAIL", "FAIL", "RUNNING"]  # nothing else was queued
