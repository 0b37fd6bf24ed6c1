"""The search on a local Ray instance: pruning, failures, stage-1 sharing, kill and resume."""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tests.conftest import (
    FINAL,
    resume_search,
    search_command,
    sigkill_search_when,
    small_space,
    trial_results,
)

pytestmark = pytest.mark.slow


def load_study(run_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(
        study_name=f"handreid-{name}", storage=f"sqlite:///{run_dir / 'study.db'}"
    )


def test_search_prunes_fails_shares_stage1_and_scores_the_best(ray_local, tmp_path):
    from search.driver import run_search
    from search.rundir import SearchOptions
    from search.space import load_space

    good = {"model.unfreeze_blocks": 2, "optim.lr_heads": 0.003}
    # frozen towers and heads: random features, a flat curve at about 15 val mAP, where the
    # good trials have about 20 at epoch 1 and 25 by epoch 4
    frozen = {"model.unfreeze_blocks": 0, "optim.lr_heads": 1e-12}
    space = load_space(
        small_space(
            tmp_path,
            num_samples=7,
            fixed={"model.backbone": "tiny-vit"},
            search={
                "optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "model.unfreeze_blocks": {"type": "int", "low": 0, "high": 2},
                "optim.lr_heads": {"type": "categorical", "choices": [0.003, 1e-12, 1e30]},
            },
            start_points=[
                {**good, "optim.lr_visual": 3e-3},
                {**good, "optim.lr_visual": 2e-3},
                {**frozen, "optim.lr_visual": 1e-3},
                {**frozen, "optim.lr_visual": 1e-4},
                {**good, "optim.lr_heads": 1e30},
            ],
        )
    )  # the last one diverges
    opts = SearchOptions(name="s", storage=str(tmp_path / "runs"), verbose=0)
    table = run_search(space, opts)
    run_dir = tmp_path / "runs" / "s"

    assert len(table) == 7 and table["trial_id"].is_unique
    assert set(table["status"]) <= {"complete", "pruned", "failed"}
    assert (table["status"] == "pruned").sum() >= 2  # at least the two frozen trials
    failed = table[table["status"] == "failed"]
    assert len(failed) >= 1 and failed["fail_reason"].str.startswith("diverged").all()

    study = load_study(run_dir, "s")
    states = [t.state for t in study.trials]
    # diverged trials are PRUNED in the study (TPE then avoids their region), failed in the table
    diverged = failed["fail_reason"].str.startswith("diverged").sum()
    pruned_here = (table["status"] == "pruned").sum()
    assert states.count(optuna.trial.TrialState.PRUNED) == pruned_here + diverged
    assert states.count(optuna.trial.TrialState.FAIL) == len(failed) - diverged
    pruned = [
        t
        for t in study.trials
        if t.state == optuna.trial.TrialState.PRUNED and "fail_reason" not in t.user_attrs
    ]
    assert all(t.intermediate_values and t.user_attrs["pruned_at_epoch"] < 4 for t in pruned)
    assert [t.params["optim.lr_visual"] for t in study.trials[:4]] == [3e-3, 2e-3, 1e-3, 1e-4]
    assert study.trials[4].params["optim.lr_heads"] == 1e30  # start points go first
    assert "diverged" in study.trials[4].user_attrs["fail_reason"]
    assert study.trials[4].state == optuna.trial.TrialState.PRUNED
    # the two good trials reach rung 1 first (2 run at once), so both frozen trials fall
    # below its median there
    frozen_trials = {t.user_attrs["ray_trial_id"] for t in study.trials[2:4]}
    frozen_rows = table[table.trial_id.isin(frozen_trials)]
    assert set(frozen_rows["status"]) == {"pruned"}
    good_rows = table[table.trial_id.isin({t.user_attrs["ray_trial_id"] for t in study.trials[:2]})]
    assert frozen_rows["best_val_mAP"].max() < good_rows["best_val_mAP"].min()

    # stage 1 ran once for the whole search: no stage-2 parameter changes its key
    log = (run_dir / "stage1_cache" / "computations.log").read_text().splitlines()
    assert len(log) == 1

    # the best trial of each backbone was scored on the test protocol, and only those
    scored = table.dropna(subset=["test_mAP"])
    assert sorted(scored["backbone"]) == sorted(
        table[table.status != "failed"]["backbone"].unique()
    )
    for backbone in scored["backbone"]:
        best = run_dir / "best" / backbone
        assert (best / "config.yaml").is_file() and (best / "best.pt").is_file()
        test = json.loads((best / "test_metrics.json").read_text())
        assert len(test["per_split"]) == 10
    on_disk = pd.read_csv(run_dir / "trials.csv")
    assert len(on_disk) == 7

    # no trial state is left but the scored trials' best weights: ASHA-stopped, diverged and
    # beaten trials left nothing, and no per-epoch checkpoint survives the wrap-up
    scratch = run_dir / "scratch"
    assert {p.name for p in scratch.iterdir()} <= set(scored["trial_id"])
    assert [p.name for p in scratch.rglob("*.pt")] == ["best.pt"] * len(list(scratch.iterdir()))


def test_sigkill_then_resume_accounts_for_every_trial(tmp_path):
    space = small_space(tmp_path, num_samples=6, max_epochs=6)
    cmd = search_command(space, tmp_path / "runs", "k")
    run_dir = tmp_path / "runs" / "k"

    def going(res):  # one trial finished, more under way
        return len(res) >= 3 and any(r and r[-1]["status"] in FINAL for r in res.values())

    before = sigkill_search_when(cmd, run_dir, going)
    done_before = {t: len(r) for t, r in before.items() if r and r[-1]["status"] in FINAL}
    assert not (run_dir / "trials.csv").exists()
    tear_saved_state(run_dir)
    resume_search(cmd)
    table = pd.read_csv(run_dir / "trials.csv", dtype={"trial_id": str})
    assert len(table) == 6 and table["trial_id"].is_unique
    assert set(trial_results(run_dir)) == {f"trial_{t}" for t in table["trial_id"]}
    assert set(table["status"]) <= {"complete", "pruned"}
    after = trial_results(run_dir)
    for trial, n_rows in done_before.items():  # finished trials were not rerun (at most the
        assert n_rows <= len(after[trial]) <= n_rows + 1  # last epoch replays, identically)
        assert after[trial][n_rows - 1]["val_mAP"] == after[trial][-1]["val_mAP"]
    replays = 0
    for trial, rows in after.items():  # no epoch lost; a replayed epoch has the same values
        by_epoch: dict[int, set] = {}
        for r in rows:
            by_epoch.setdefault(r["epoch"], set()).add(r["val_mAP"])
        assert sorted(by_epoch) == list(range(1, len(by_epoch) + 1)), (trial, sorted(by_epoch))
        assert all(len(v) == 1 for v in by_epoch.values()), trial
        replays += len(rows) - len(by_epoch)
    assert replays <= len(before)  # at most the epoch in flight per trial: never from scratch


def tear_saved_state(run_dir):
    """What a kill during Tune's background copy of its driver state leaves (seen in CI): a
    search generator from a later snapshot than the trial list, counting two trials the list
    never got and holding limiter slots for them. The resume must still run every sample."""
    import ray.cloudpickle as cloudpickle

    path = max(run_dir.glob("search_gen_state-*.json"))
    state = cloudpickle.loads(path.read_bytes())
    state["counter"] += 2
    limiter = state["name:ConcurrencyLimiter"]
    limiter["live_trials"] |= {"lost0001", "lost0002"}
    limiter["num_unfinished_live_trials"] += 2
    path.write_bytes(cloudpickle.dumps(state))


def test_storage_can_be_a_pyarrow_uri(ray_local, tmp_path, monkeypatch):
    from search.driver import run_search
    from search.rundir import SearchOptions
    from search.space import load_space

    monkeypatch.chdir(tmp_path)
    space = load_space(small_space(tmp_path, num_samples=2, max_epochs=2))
    uri = (tmp_path / "store").as_uri()  # file:///... through pyarrow's filesystem layer
    table = run_search(space, SearchOptions(name="u", storage=uri, verbose=0))
    assert len(table) == 2
    remote = list((tmp_path / "store" / "u").glob("trial_*/result.json"))
    assert len(remote) == 2
    local = tmp_path / "runs" / "u"  # summaries and the study stay on the driver
    assert (local / "trials.csv").is_file() and (local / "study.db").is_file()
    assert len(list(local.glob("trial_*/result.json"))) == 2  # mirrored for the report
    assert (local / "report" / "report.html").is_file()


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (rather than hang) when the block runs longer than ``seconds``."""

    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--gpus-per-trial", "1"], "--gpus-per-trial 1: the cluster has 0 GPUs"),
        (["--gpus-per-trial", "0.5"], "--gpus-per-trial 0.5: the cluster has 0 GPUs"),
        (["--cpus-per-trial", "3"], "--cpus-per-trial 3: the cluster has 2 CPUs"),
    ],
)
def test_resources_no_node_has_are_refused_before_any_trial(
    ray_local, tmp_path, capsys, flags, message
):
    from search.cli import main

    space = small_space(tmp_path, num_samples=2, max_epochs=1)
    args = ["--space", str(space), "--storage", str(tmp_path / "runs"), "--quiet", *flags]
    with deadline(60):
        assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message} (largest node: 2 CPUs, 0 GPUs)"), err
    assert "\n" not in err
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


def test_an_autoscaling_cluster_is_not_refused_for_nodes_it_may_add(
    ray_local, tmp_path, monkeypatch
):
    from search.launch import check_resources
    from search.rundir import SearchOptions
    from search.space import load_space

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ray_bootstrap_config.yaml").write_text("{}")  # what `ray up` leaves there
    space = load_space(small_space(tmp_path, num_samples=1))
    check_resources(space, SearchOptions(name="a", storage=str(tmp_path), gpus_per_trial=1))


def test_a_search_whose_trials_all_fail_exits_non_zero_and_says_why(ray_local, tmp_path, capsys):
    from search.cli import main

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")  # passes the space's checks, fails in every trial
    space = small_space(
        tmp_path,
        num_samples=2,
        max_epochs=1,
        fixed={"model.backbone": "tiny-rn", "model.pretrained": str(junk)},
        search={"optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        tune={"max_failures": 0},
    )
    args = ["--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "f", "--quiet"]
    with deadline(120):
        assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: all 2 trials failed; first failure: error: "), err
    assert "\n" not in err
    assert (tmp_path / "runs" / "f" / "trials.csv").is_file()  # the record is still written


def rows_of(results: dict[str, list[dict]]) -> list[dict]:
    return [row for rows in results.values() for row in rows]


def test_a_trial_that_runs_out_of_memory_is_retried_from_its_checkpoint(
    ray_local, tmp_path, monkeypatch
):
    """An OOM in a search trial (on a shared GPU, maybe a neighbour's doing) raises, and Tune
    runs the trial again from its last checkpoint (``max_failures``): it completes, and no
    epoch before the checkpoint is trained twice. Without the raise the trial would end as
    "oom" and count as failed."""
    from search import trainable
    from search.cli import main

    marker = tmp_path / "oom-injected"

    def first_attempt_runs_out_of_memory(config, **kwargs):  # runs in the trial's worker
        import torch

        from handreid.train.trainer import Trainer
        from search.trainable import run_trial

        if marker.exists():  # the retry, or any other trial
            return run_trial(config, **kwargs)
        original = Trainer.train_epoch

        def oom(self, epoch):
            if epoch == 3:
                marker.write_text(str(epoch))
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return original(self, epoch)

        Trainer.train_epoch = oom
        try:
            return run_trial(config, **kwargs)
        finally:
            Trainer.train_epoch = original  # the actor is reused for the next trial

    monkeypatch.setattr(trainable, "run_trial", first_attempt_runs_out_of_memory)
    space = small_space(
        tmp_path,
        num_samples=2,
        fixed={"model.backbone": "tiny-rn"},
        search={"optim.lr_visual": {"type": "float", "low": 1e-4, "high": 3e-4, "log": True}},
        tune={
            "max_failures": 1,
            "max_concurrent": 1,
            "scheduler": {
                "type": "asha",
                "grace_period": 4,
                "reduction_factor": 2,
                "max_epochs": 4,
            },
        },
    )
    args = ["--space", str(space), "--storage", str(tmp_path / "runs"), "--name", "o", "--quiet"]
    with deadline(300):
        assert main(args) == 0
    assert marker.read_text() == "3"  # the fault did fire
    run_dir = tmp_path / "runs" / "o"
    table = pd.read_csv(run_dir / "trials.csv")
    assert list(table["status"]) == ["complete", "complete"], table
    results = trial_results(run_dir)
    retried = [
        name
        for name in results
        if any(p.name.startswith("error") for p in (run_dir / name).iterdir())
    ]
    epochs = {tid: [r["epoch"] for r in rows] for tid, rows in results.items()}
    assert all(e == [1, 2, 3, 4] for e in epochs.values()), epochs  # resumed after epoch 2
    assert all(r["judge_from_epoch"] == 0 and "warmup_epochs" in r for r in rows_of(results))
    assert len(retried) == 1, retried  # Tune recorded the error of the first attempt
