"""Fault tolerance on a multi-node Ray cluster on this machine: a lost worker node and a
lost driver. Every trial must be accounted for, with no epoch lost or reported twice."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import (
    REPO,
    resume_search,
    search_command,
    sigkill_search_when,
    small_space,
    trial_results,
)

pytestmark = pytest.mark.slow
NUM_SAMPLES, EPOCHS = 6, 8


def space_file(tmp_path: Path) -> Path:
    # grace = max epochs: ASHA stops nothing, so every trial must reach its last epoch
    return small_space(
        tmp_path,
        num_samples=NUM_SAMPLES,
        max_epochs=EPOCHS,
        fixed={"data.synth.ids": 16, "model.backbone": "tiny-rn"},
        search={"optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        tune={
            "max_concurrent": 3,
            "max_failures": 3,
            "n_startup_trials": 2,
            "scheduler": {"type": "asha", "grace_period": EPOCHS, "max_epochs": EPOCHS},
        },
    )


def record(fault: str, **facts) -> None:
    """Append what happened to test-artifacts/reliability.jsonl (RELIABILITY.md's source)."""
    out = REPO / "test-artifacts"
    out.mkdir(exist_ok=True)
    with open(out / "reliability.jsonl", "a") as fh:
        fh.write(json.dumps({"fault": fault, "trials": NUM_SAMPLES, **facts}) + "\n")


def check_accounted(run_dir: Path) -> int:
    """Every trial once in trials.csv, complete, every epoch present; returns the number of
    epochs re-executed after a crash (Tune is at-least-once for an epoch in flight)."""
    table = pd.read_csv(run_dir / "trials.csv", dtype={"trial_id": str})
    assert len(table) == NUM_SAMPLES and table["trial_id"].is_unique
    assert set(trial_results(run_dir)) == {f"trial_{t}" for t in table["trial_id"]}
    assert set(table["status"]) == {"complete"}, table[["trial_id", "status", "fail_reason"]]
    replays = 0
    for trial, rows in trial_results(run_dir).items():
        by_epoch: dict[int, list[float]] = {}
        for r in rows:
            by_epoch.setdefault(r["epoch"], []).append(r["val_mAP"])
        assert sorted(by_epoch) == list(range(1, EPOCHS + 1)), (trial, sorted(by_epoch))
        for epoch, values in by_epoch.items():  # a replayed epoch reproduces its values
            assert len(set(values)) == 1, (trial, epoch, values)
            replays += len(values) - 1
    return replays


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # the head runs the driver only; three one-CPU worker nodes run the trials
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(3):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def test_a_lost_worker_node_is_survived(cluster, tmp_path):
    import ray

    from search.driver import run_search
    from search.rundir import SearchOptions
    from search.space import load_space

    run_dir = tmp_path / "runs" / "node"
    killed: dict = {}

    def kill_a_busy_worker():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            for rows in trial_results(run_dir).values():
                if rows and rows[-1]["status"] == "running" and rows[-1]["epoch"] >= 2:
                    node = next(
                        (n for n in cluster.worker_nodes if n.node_id == rows[-1]["node_id"]), None
                    )
                    if node is not None:
                        victims = [
                            t
                            for t, r in trial_results(run_dir).items()
                            if r
                            and r[-1]["status"] == "running"
                            and r[-1]["node_id"] == node.node_id
                        ]
                        cluster.remove_node(node, allow_graceful=False)
                        killed.update(
                            node_id=node.node_id,
                            trials=victims,
                            epochs={t: trial_results(run_dir)[t][-1]["epoch"] for t in victims},
                        )
                        return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    space = load_space(space_file(tmp_path))
    opts = SearchOptions(
        name="node", storage=str(tmp_path / "runs"), address=cluster.address, verbose=0
    )
    try:
        run_search(space, opts)
    finally:
        ray.shutdown()
    killer.join(timeout=5)
    assert killed, "no worker node was killed mid-search"
    replays = check_accounted(run_dir)
    assert replays <= len(killed["trials"])  # at most the epoch in flight, never from scratch
    all_rows = [r for rows in trial_results(run_dir).values() for r in rows]
    assert len({r["node_id"] for r in all_rows}) >= 2  # trials spread over nodes
    retried = 0
    for trial in killed["trials"]:  # retried from the last checkpoint, on another node
        nodes = [r["node_id"] for r in trial_results(run_dir)[trial]]
        if set(nodes) == {killed["node_id"]}:  # its last epoch was already on its way
            assert len(nodes) == EPOCHS
            continue
        retried += 1
        first_elsewhere = next(i for i, n in enumerate(nodes) if n != killed["node_id"])
        assert first_elsewhere >= killed["epochs"][trial]  # did not start over at epoch 1
        assert killed["node_id"] not in nodes[first_elsewhere:]
    assert retried >= 1  # at least one trial lost its node mid-training and was retried
    record("worker node SIGKILL", retried=retried, epochs_replayed=replays, lost=0, duplicated=0)
    cluster.add_node(num_cpus=1)  # back to three workers for the next test
    cluster.wait_for_nodes()


def test_a_killed_driver_resumes_on_the_same_cluster(cluster, tmp_path):
    storage = tmp_path / "runs"
    cmd = search_command(space_file(tmp_path), storage, "drv", "--address", cluster.address)
    run_dir = storage / "drv"

    def going(res):  # a trial finished and another one mid-training
        last = [rows[-1]["status"] for rows in res.values() if rows]
        return "done" in last and "running" in last

    before = sigkill_search_when(cmd, run_dir, going)
    finished = {t: len(r) for t, r in before.items() if r and r[-1]["status"] == "done"}
    resume_search(cmd)
    replays = check_accounted(run_dir)
    in_flight = [t for t, r in before.items() if r and r[-1]["status"] == "running"]
    # resumed from checkpoints, not from scratch: at most one epoch per trial under way
    assert replays <= len(in_flight) + len(finished)
    after = trial_results(run_dir)
    for trial, n in finished.items():
        # not rerun: at most its last epoch replays (identical), if the kill came between
        # that report and the snapshot recording the trial as finished
        assert n <= len(after[trial]) <= n + 1
        assert [r["epoch"] for r in after[trial][:n]] == list(range(1, n + 1))
    orphaned = [p.name for p in (run_dir / "orphaned").glob("trial_*")]
    assert not set(orphaned) & set(finished)  # only trials Tune never recorded
    record(
        "driver SIGKILL + --resume",
        retried=len(in_flight),
        epochs_replayed=replays,
        finished_before_kill=len(finished),
        orphaned=len(orphaned),
        lost=0,
        duplicated=0,
    )
