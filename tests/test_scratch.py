"""Trial state on disk: the per-epoch hand-off to Tune, restore, and the driver's clean-up."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from search.scratch import ScratchKeeper
from search.trainable import (
    FINISHED,
    drop_states,
    epoch_file,
    finished_here,
    hand_over,
    restore_into,
)


@dataclass
class FakeTrial:
    trial_id: str
    last_result: dict = field(default_factory=dict)


class FakeCheckpoint:
    def __init__(self, folder: Path):
        self.folder = folder

    def as_directory(self):
        import contextlib

        return contextlib.nullcontext(str(self.folder))


def write_state(path: Path, data: bytes) -> None:
    """As the trainer writes: a new file renamed into place (links keep the old one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def a_trial_folder(root: Path, name: str) -> Path:
    out = root / name
    (out / "states").mkdir(parents=True)
    for epoch in (1, 2, 3):
        epoch_file(out, epoch).write_bytes(b"x" * 10)
    (out / "checkpoint.pt").write_bytes(b"c")
    (out / "best.pt").write_bytes(b"b")
    return out


def test_ended_trials_keep_only_a_top_k_best(tmp_path):
    keeper = ScratchKeeper(tmp_path, top_k=1, mode="max")
    for name in ("a", "b", "c", "d"):
        a_trial_folder(tmp_path, name)
    keeper.on_trial_complete(0, [], FakeTrial("a", {"objective": 30.0, "backbone": "rn"}))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([FINISHED, "best.pt"])
    keeper.on_trial_complete(0, [], FakeTrial("b", {"objective": 40.0, "backbone": "rn"}))
    assert not (tmp_path / "a" / "best.pt").exists()  # left the top-1 of its backbone
    assert (tmp_path / "b" / "best.pt").exists()
    keeper.on_trial_complete(0, [], FakeTrial("c", {"objective": 10.0, "backbone": "vit"}))
    assert (tmp_path / "c" / "best.pt").exists()  # each backbone has its own top-k
    keeper.on_trial_error(0, [], FakeTrial("d", {"objective": 50.0, "backbone": "rn"}))
    assert epoch_file(tmp_path / "d", 3).exists()  # kept for --retry-failed
    for name in ("a", "b", "c"):
        assert finished_here(tmp_path / name)  # a resumed driver does not run them again
        assert not (tmp_path / name / "states").exists()


def test_hand_over_names_the_state_and_restore_drops_unreported_epochs(tmp_path):
    out = tmp_path / "trial"
    out.mkdir()
    for epoch in (1, 2):
        write_state(out / "checkpoint.pt", f"state {epoch}".encode())
        folder = tmp_path / f"tune_{epoch}"
        folder.mkdir()
        hand_over(out, folder, epoch, best_epoch=1, durable=True)
        assert json.loads((folder / "state.json").read_text())["epoch"] == epoch
        assert not (folder / "checkpoint.pt").exists()  # Tune gets the manifest only
    write_state(out / "checkpoint.pt", b"state 3")  # written, never reported: a kill
    epoch_file(out, 3).write_bytes(b"state 3")
    assert restore_into(out, FakeCheckpoint(tmp_path / "tune_2")) is False
    assert (out / "checkpoint.pt").read_bytes() == b"state 2"
    assert (out / "best.pt").read_bytes() == b"state 1"
    assert not epoch_file(out, 3).exists()


def test_states_are_kept_as_tune_keeps_checkpoints(tmp_path):
    out = tmp_path / "trial"
    (out / "states").mkdir(parents=True)
    for epoch in range(1, 6):
        epoch_file(out, epoch).write_bytes(b"x")
    drop_states(out, keep={2}, last=2)  # Tune keeps the 2 newest; they name epoch 2 best
    assert sorted(p.name for p in (out / "states").iterdir()) == [
        "epoch_0002.pt",
        "epoch_0004.pt",
        "epoch_0005.pt",
    ]


def test_a_missing_state_is_one_clear_error(tmp_path):
    from handreid.errors import HandReIDError

    out = tmp_path / "trial"
    out.mkdir()
    folder = tmp_path / "tune"
    folder.mkdir()
    (out / "checkpoint.pt").write_bytes(b"s")
    hand_over(out, folder, 4, best_epoch=4, durable=True)
    epoch_file(out, 4).unlink()  # e.g. deleted by hand, or storage not shared by this node
    with pytest.raises(HandReIDError, match="checkpoint state of epoch 4 is missing"):
        restore_into(out, FakeCheckpoint(folder))


def test_an_ended_trial_replays_the_epochs_tune_never_recorded(tmp_path):
    from types import SimpleNamespace

    from search.trainable import history_after

    out = tmp_path / "trial"
    out.mkdir()
    (out / "history.csv").write_text(
        "epoch,val_mAP,best_epoch,status\n1,20.5,1,running\n2,30.25,2,running\n3,25.0,2,done\n"
    )
    space = SimpleNamespace(tune=SimpleNamespace(mode="max", metric="val_mAP"))
    rows = history_after(out, 1, space)
    assert [r["epoch"] for r in rows] == [2, 3]
    assert rows[1] == {
        "epoch": 3,
        "val_mAP": 25.0,
        "best_epoch": 2,
        "status": "done",
        "objective": 30.25,
    }


def test_a_best_written_on_its_own_is_kept_and_restored(tmp_path):
    # states every 3 epochs: epoch 2 was best, its tensors written on their own at epoch 3
    out = tmp_path / "trial"
    out.mkdir()
    write_state(out / "best.pt", b"best 2")
    write_state(out / "checkpoint.pt", b"state 3")
    folder = tmp_path / "tune_3"
    folder.mkdir()
    hand_over(out, folder, 3, best_epoch=2, durable=True)
    assert epoch_file(out, 2).read_bytes() == b"best 2"
    assert epoch_file(out, 3).read_bytes() == b"state 3"
    write_state(out / "checkpoint.pt", b"state 6")  # epoch 6 improved: best.pt is its state
    write_state(out / "best.pt", b"state 6")
    (tmp_path / "tune_6").mkdir()
    hand_over(out, tmp_path / "tune_6", 6, best_epoch=6, durable=True)
    drop_states(out, keep={2, 6} | {3, 6}, last=0)  # Tune keeps checkpoints 3 and 6
    assert restore_into(out, FakeCheckpoint(folder)) is False  # back to epoch 3
    assert (out / "checkpoint.pt").read_bytes() == b"state 3"
    assert (out / "best.pt").read_bytes() == b"best 2"


def test_a_trial_writes_its_state_at_every_rung(tmp_path):
    from search.space import load_space
    from search.trainable import state_at_rungs

    space = load_space(Path(__file__).parents[1] / "spaces" / "vitb16.yml")
    cfg = state_at_rungs(space.base, space)
    assert cfg.train.checkpoint_every == 5
    assert set(space.tune.milestones(space.max_epochs)) <= set(cfg.train.checkpoint_epochs)
