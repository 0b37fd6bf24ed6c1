"""A search with URI storage survives losing its head: the study comes back from the storage."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pandas as pd

from tests.conftest import (
    FINAL,
    STATES,
    record_fault,
    replayed_epochs,
    resume_search,
    search_command,
    sigkill_search_when,
    small_space,
    trial_results,
)


def test_a_killed_uri_search_resumes_on_a_new_head(tmp_path):
    space = small_space(tmp_path, num_samples=6, max_epochs=4)
    store = tmp_path / "store"
    head = tmp_path / "head"  # the head's disk: run directory, study, summaries
    cmd = search_command(space, store.as_uri(), "n", "--run-dir", str(head / "n"))

    def going(res):  # on the storage: a trial finished, more under way
        return len(res) >= 3 and any(r and r[-1]["status"] in FINAL for r in res.values())

    before = sigkill_search_when(cmd, store / "n", going)
    done_before = {t: len(r) for t, r in before.items() if r and r[-1]["status"] in FINAL}
    assert (store / "n" / "study.db").is_file() and (head / "n" / "study.db").is_file()
    shutil.rmtree(head)  # a new head: nothing of the run directory is left
    resume_search(cmd)

    table = pd.read_csv(head / "n" / "trials.csv", dtype={"trial_id": str})
    assert len(table) == 6 and table["trial_id"].is_unique
    assert set(table["status"]) <= {"complete", "pruned"}
    after = trial_results(store / "n")
    assert set(after) == {f"trial_{t}" for t in table["trial_id"]}
    for trial, n_rows in done_before.items():  # finished before the kill: not run again
        assert n_rows <= len(after[trial]) <= n_rows + 1

    study = optuna.load_study(
        study_name="handreid-n", storage=f"sqlite:///{head / 'n' / 'study.db'}"
    )
    recorded = [t for t in study.trials if t.user_attrs.get("fail_reason") != "driver lost"]
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in recorded}
    assert len(by_ray_id) == len(recorded)  # no trial told twice
    assert set(by_ray_id) == set(table["trial_id"])  # none lost, none extra
    for trial_id, status in zip(table["trial_id"], table["status"]):
        assert by_ray_id[trial_id].state.name == STATES[status], trial_id
    assert len(study.trials) - len(recorded) <= 2  # at most the trials in flight at the kill
    assert [p.relative_to(store) for p in store.rglob("*.db")] == [Path("n/study.db")]
    record_fault(
        "new head: driver SIGKILLed, run directory deleted, then --resume (URI storage)",
        trials=len(table),
        finished_before=len(done_before),
        lost=0,  # asserted above: every trial in trials.csv and the study, once
        duplicated_trials=0,
        epochs_replayed=replayed_epochs(after),
    )


def test_trial_folders_unknown_to_the_search_move_aside_on_the_storage(tmp_path):
    """A killed driver can leave a trial folder on the storage that its saved state never
    knew (the resumed search runs that configuration under a new id): it moves to
    orphaned/, as set_aside_orphans does with a folder as storage."""
    from types import SimpleNamespace

    from search.resume import set_aside_stored_orphans

    for name in ("trial_known", "trial_orphan", "confirm-1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text("{}\n")
    grid = [SimpleNamespace(path=str(tmp_path / "trial_known"))]
    assert set_aside_stored_orphans(tmp_path.as_uri(), grid) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confirm-1", "orphaned", "trial_known"]
    assert (tmp_path / "orphaned" / "trial_orphan" / "result.json").is_file()
