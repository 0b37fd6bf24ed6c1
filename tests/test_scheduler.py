"""ASHA after a resume prunes the way an uninterrupted search does, shown on a replayed
schedule: 8 trials of 9 epochs, 3 at a time, each running trial reporting in turn. The
same schedule runs once through one scheduler and once interrupted, the interrupted part
written as Tune writes it (``<experiment>/trial_<id>/result.json``) and continued by a
fresh scheduler unpickled from before the search, as ``Tuner.restore`` makes it. No Ray
cluster: Tune's ``Trial`` objects and a stand-in for its controller."""

from __future__ import annotations

import json
import math
import pickle
from collections import deque
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.tune")

from ray.train._internal.storage import StorageContext  # noqa: E402
from ray.tune.experiment import Trial  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, TrialScheduler  # noqa: E402

from search.scheduler import ResumableASHA, recorded_results  # noqa: E402

MAX_T, GRACE, RF, SLOTS = 9, 1, 2, 3  # rungs at epochs 1, 2, 4 and 8
IDS = [
    "5defe307",
    "c183db80",
    "8a226383",
    "6e6db28c",
    "aea68495",
    "7c8dfb4d",
    "0b6a1e2f",
    "3e9d4c71",
]  # as random as Tune's
STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE


def learning_curve(seed: int) -> list[float]:
    """Best-so-far validation scores of epochs 1..MAX_T: rising, noisy, crossing others."""
    rng = np.random.default_rng(seed)
    level, speed = rng.uniform(0.3, 0.9), rng.uniform(0.15, 1.2)
    raw = [level * (1 - math.exp(-speed * e)) + rng.normal(0, 0.03) for e in range(1, 10)]
    return [float(v) for v in np.maximum.accumulate(raw)]


CURVES = {tid: learning_curve(220 + i) for i, tid in enumerate(IDS)}  # stops at every rung


def asha(cls=ResumableASHA, **settings):
    """The replay's ASHA; ``settings`` replace its schedule or add to it."""
    schedule = {"max_t": MAX_T, "grace_period": GRACE, "reduction_factor": RF, **settings}
    return cls(time_attr="epoch", **schedule)


class Controller:
    """What Tune's controller offers a scheduler and these use: the trial list."""

    def __init__(self):
        self.trials: list[Trial] = []

    def get_trials(self) -> list[Trial]:
        return self.trials


def make_trial(tid: str, storage_path: str) -> Trial:
    storage = StorageContext(
        storage_path=storage_path, experiment_dir_name="exp", trial_dir_name=f"trial_{tid}"
    )
    return Trial("handreid", trial_id=tid, stub=True, storage=storage)


class Search:
    """The schedule: SLOTS trials run at once and report one epoch each in turn; a trial
    ends on STOP or at MAX_T, and the next trial starts. Each result is appended to the
    trial's result.json; ``log`` holds every decision as (trial id, epoch, decision)."""

    def __init__(self, scheduler, root: Path, tick: int = 1):
        self.root, self.clock, self.tick = root, 0, tick  # seconds between results
        self.pending, self.running = list(IDS), deque()
        self.epoch: dict[str, int] = {}
        self.log: list[tuple[str, int, str]] = []
        self.attach(scheduler, Controller())
        self.start_trials()

    def attach(self, scheduler, controller: Controller) -> None:
        self.scheduler, self.controller = scheduler, controller
        scheduler.set_search_properties(metric="objective", mode="max")

    def start_trials(self) -> None:
        while len(self.running) < SLOTS and self.pending:
            trial = make_trial(self.pending.pop(0), str(self.root))
            self.controller.trials.append(trial)
            self.scheduler.on_trial_add(self.controller, trial)
            self.epoch[trial.trial_id] = 1
            self.running.append(trial)

    def result(self, tid: str, epoch: int) -> dict:
        self.clock += self.tick  # Tune's timestamps are whole seconds
        return {
            "epoch": epoch,
            "objective": CURVES[tid][epoch - 1],
            "trial_id": tid,
            "status": "running",
            "timestamp": self.clock,
            "training_iteration": epoch,
        }

    def step(self) -> None:
        self.scheduler.choose_trial_to_run(self.controller)
        trial = self.running.popleft()
        tid, epoch = trial.trial_id, self.epoch[trial.trial_id]
        result = self.result(tid, epoch)
        decision = self.scheduler.on_trial_result(self.controller, trial, result)
        folder = self.root / "exp" / f"trial_{tid}"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "result.json").open("a") as f:  # as Tune logs it: after the decision
            f.write(json.dumps({**result, "done": decision == STOP}) + "\n")
        self.log.append((tid, epoch, decision))
        if decision == STOP or epoch == MAX_T:
            self.scheduler.on_trial_complete(self.controller, trial, result)
            trial.set_status(Trial.TERMINATED)
        else:
            self.epoch[tid] = epoch + 1
            self.running.append(trial)
        self.start_trials()

    def run(self, steps: int | None = None) -> Search:
        while (self.running or self.pending) and steps != 0:
            self.step()
            steps = None if steps is None else steps - 1
        return self

    def restore(self, scheduler, *, rerun: str | None = None) -> None:
        """What ``Tuner.restore(resume_unfinished=True)`` does: a new scheduler, the trials
        rebuilt from the saved list (same ids, storage given as a URI) and added again, most
        recent first; unfinished ones continue from their last epoch's checkpoint. ``rerun``
        names an ended trial whose end the saved list missed: it is unfinished there."""
        old = {t.trial_id: t for t in self.controller.trials}
        controller = Controller()
        for tid, trial in old.items():
            new = make_trial(tid, self.root.as_uri())
            if trial.status == Trial.TERMINATED and tid != rerun:
                new.set_status(Trial.TERMINATED)
            controller.trials.append(new)
        self.attach(scheduler, controller)
        for trial in reversed(controller.trials):
            scheduler.on_trial_add(controller, trial)
        fresh = {t.trial_id: t for t in controller.trials}
        self.running = deque(fresh[t.trial_id] for t in self.running)


def pristine(cls=ResumableASHA, **settings) -> bytes:
    """The scheduler as tuner.pkl holds it: pickled when the Tuner was made, never run."""
    return pickle.dumps(asha(cls, **settings))


def interrupted(tmp_path: Path, at: int, cls=ResumableASHA, tick: int = 1, **settings) -> Search:
    saved = pristine(cls, **settings)
    search = Search(pickle.loads(saved), tmp_path, tick).run(steps=at)
    search.restore(pickle.loads(saved))
    return search.run()


def stops(log) -> list[tuple[str, int]]:
    return [(tid, epoch) for tid, epoch, d in log if d == STOP and epoch < MAX_T]


def test_the_schedule_prunes(tmp_path):
    """The replayed schedule is one where ASHA stops trials at several rungs."""
    log = Search(asha(), tmp_path).run().log
    assert {epoch for _, epoch in stops(log)} == {1, 2, 4, 8}
    assert log == Search(asha(ASHAScheduler), tmp_path / "plain").run().log  # no resume: same


@pytest.mark.parametrize("tick", [1, 0], ids=["a second apart", "all in one second"])
def test_after_a_resume_asha_prunes_as_an_uninterrupted_search(tmp_path, tick):
    full = Search(asha(), tmp_path / "full").run().log
    for at in range(1, len(full), 3):
        log = interrupted(tmp_path / f"at{at}", at, tick=tick).log
        assert log == full, f"interrupted after {at} results"


def test_hyperband_after_a_resume_prunes_as_an_uninterrupted_search(tmp_path):
    """Three brackets: each trial keeps its bracket across the restore, so the decisions
    are the same as without the interruption (Ray's random draw would move trials)."""
    full = Search(asha(brackets=3), tmp_path / "full").run().log
    assert {epoch for _, epoch in stops(full)} >= {1, 2}
    for at in range(1, len(full), 3):
        log = interrupted(tmp_path / f"at{at}", at, brackets=3).log
        assert log == full, f"interrupted after {at} results"


def test_plain_asha_forgets_its_rungs_on_resume(tmp_path):
    """Tune's own ASHA, restored the same way, decides otherwise after the resume and lets
    a trial through that it would stop: what the test above guards against."""
    full = Search(asha(), tmp_path / "full").run().log
    at = len(full) // 3
    log = interrupted(tmp_path / "plain", at, ASHAScheduler).log
    assert log[:at] == full[:at]
    assert log != full
    assert set(stops(full[at:])) - set(stops(log[at:]))  # a trial it should stop runs on


@pytest.mark.parametrize("tick", [1, 0], ids=["a second apart", "all in one second"])
def test_a_stopped_trial_run_again_is_stopped_again_at_its_rung(tmp_path, tick):
    """A trial stopped just before the interruption, whose stop Tune's saved state missed,
    runs again: from scratch it reports its epochs again and is stopped at the same rung;
    from its last checkpoint it is stopped at its first result."""
    full = Search(asha(), tmp_path / "full").run().log
    at, (tid, rung) = next(
        (i + 1, (t, e)) for i, (t, e, d) in enumerate(full) if d == STOP and 1 < e < MAX_T
    )
    before = [d for t, _, d in full if t == tid]
    for start, name in ((1, "scratch"), (rung + 1, "checkpoint")):
        search = Search(pickle.loads(pristine()), tmp_path / name, tick).run(steps=at)
        search.restore(pickle.loads(pristine()), rerun=tid)
        trial = next(t for t in search.controller.trials if t.trial_id == tid)
        assert trial.status == Trial.PENDING
        search.scheduler.choose_trial_to_run(search.controller)
        again = []
        for epoch in range(start, MAX_T + 1):
            again.append(
                search.scheduler.on_trial_result(
                    search.controller, trial, search.result(tid, epoch)
                )
            )
            if again[-1] == STOP:
                break
        if name == "scratch":
            assert again == before  # CONTINUE up to the rung, STOP there
        else:
            assert again == [STOP]


def test_recorded_results_merge_trials_by_timestamp_keeping_file_order(tmp_path):
    rows = {
        "b": [(1, 10), (2, 12), (3, 11)],  # a trial moved to a node whose clock is behind
        "a": [(1, 10), (2, 11)],
    }
    trials = []
    for tid, results in rows.items():
        trial = make_trial(tid, str(tmp_path))
        folder = Path(trial.path)
        folder.mkdir(parents=True)
        lines = [json.dumps({"epoch": e, "timestamp": s, "trial_id": tid}) for e, s in results]
        (folder / "result.json").write_text("\n".join(lines) + '\n{"epoch": 4, "time')  # cut
        trials.append(trial)
    trials.append(make_trial("c", str(tmp_path)))  # no result.json yet
    order = [(t.trial_id, r["epoch"]) for t, r in recorded_results(trials)]
    assert order == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("b", 3)]


def test_groups_have_their_own_rungs(tmp_path):
    """A group whose values run lower throughout (another backbone) is cut against its own
    trials, not wholesale against the other group's cutoffs."""
    controller = Controller()
    sched = asha(max_t=4, grace_period=2, group_by="model.backbone", metric="objective", mode="max")
    decisions = {}
    for i, (group, level) in enumerate([("high", 50.0)] * 4 + [("low", 30.0)] * 4):
        trial = make_trial(f"t{i}", str(tmp_path))
        trial.config = {"model.backbone": group}
        controller.trials.append(trial)
        sched.on_trial_add(controller, trial)
        value = level + (i % 4)  # within a group the later trials are better
        decisions[trial.trial_id] = sched.on_trial_result(
            controller, trial, {"epoch": 2, "objective": value}
        )
    low = [decisions[f"t{i}"] for i in range(4, 8)]
    assert low.count(CONTINUE) >= 2, low  # above its own group's median, not the pooled one
    assert set(sched.rungs()) == {"high", "low"}
    assert sorted(dict(sched.rungs()["low"])[2]) == ["t4", "t5", "t6", "t7"]


def test_no_rung_judges_a_trial_inside_its_warm_up(tmp_path):
    """A OneCycle trial still warming up (low values while its learning rate climbs) is not
    cut at the rungs inside its warm-up; it is judged at the first rung after it."""
    controller = Controller()
    sched = asha(max_t=8, grace_period=1, reduction_factor=2, metric="objective", mode="max")
    trials = {}
    for tid in ("peer", "warm", "cold"):
        trials[tid] = make_trial(tid, str(tmp_path))
        controller.trials.append(trials[tid])
        sched.on_trial_add(controller, trials[tid])

    def report(tid, epoch, value, warmup=0.0):
        result = {"epoch": epoch, "objective": value, "warmup_epochs": warmup}
        return sched.on_trial_result(controller, trials[tid], result)

    for epoch in (1, 2):  # rungs at 1, 2 (and 4): the peer sets the cutoffs
        assert report("peer", epoch, 50.0) == CONTINUE
    assert report("cold", 1, 10.0) == STOP  # the same low value without a warm-up is cut
    for epoch in (1, 2, 3):  # 3 warm-up epochs: not judged at rungs 1 and 2
        assert report("warm", epoch, 10.0, warmup=3.0) == CONTINUE
    assert all("warm" not in recorded for _, recorded in sched.rungs()[None])
    assert report("peer", 4, 60.0) == CONTINUE
    assert report("warm", 4, 20.0, warmup=3.0) == STOP  # judged after the warm-up, and cut


class Reports:
    """Results fed to one scheduler by hand, each appended to its trial's result.json as Tune
    logs it, so that a fresh scheduler can rebuild its rungs from them (``restored``)."""

    def __init__(self, root: Path, **settings):
        self.root, self.settings = root, {"metric": "objective", "mode": "max", **settings}
        self.scheduler, self.controller = asha(**self.settings), Controller()
        self.trials: dict[str, Trial] = {}

    def trial(self, tid: str) -> Trial:
        if tid not in self.trials:
            self.trials[tid] = make_trial(tid, str(self.root))
            self.controller.trials.append(self.trials[tid])
            self.scheduler.on_trial_add(self.controller, self.trials[tid])
        return self.trials[tid]

    def report(self, tid: str, epoch: int, value: float, complete=False, **extra) -> str | None:
        """The scheduler's decision on the result; None when the trial completes with it."""
        trial, result = self.trial(tid), {"epoch": epoch, "objective": value, **extra}
        decision = None
        if complete:
            self.scheduler.on_trial_complete(self.controller, trial, result)
        else:
            decision = self.scheduler.on_trial_result(self.controller, trial, result)
        Path(trial.path).mkdir(parents=True, exist_ok=True)
        with (Path(trial.path) / "result.json").open("a") as f:
            f.write(json.dumps({**result, "done": complete or decision == STOP}) + "\n")
        return decision

    def restored(self) -> ResumableASHA:
        """The scheduler of ``Tuner.restore``: unpickled from before the search, the trials
        added again, its rungs rebuilt from the files before its first decision."""
        scheduler, controller = pickle.loads(pristine(**self.settings)), Controller()
        for tid in self.trials:
            controller.trials.append(make_trial(tid, self.root.as_uri()))
            scheduler.on_trial_add(controller, controller.trials[-1])
        scheduler.choose_trial_to_run(controller)
        return scheduler


def placed(scheduler: ResumableASHA, tid: str) -> dict[float, float]:
    """The trial's value in each rung that holds it, by milestone."""
    return {m: recorded[tid] for m, recorded in scheduler.rungs()[None] if tid in recorded}


def test_a_warm_up_longer_than_the_first_rungs_leaves_them_to_the_next_rung(tmp_path):
    """A warm-up of 6 epochs passes the rungs at 1, 2 and 4. The trial's epoch-7 value is
    not put into the epoch-4 rung to be cut against the peers' epoch-4 values (Ray's bracket
    fills the highest rung at or below the epoch that lacks the trial); epoch 8 reaches the
    rung at 8 and is judged there. Restored rungs hold the same."""
    reports = Reports(tmp_path, max_t=16)  # rungs at 1, 2, 4, 8 (and 16)
    for epoch in range(1, 9):
        assert reports.report("peer", epoch, 50.0) == CONTINUE
    decisions = [reports.report("warm", e, 40.0, warmup_epochs=6.0) for e in range(1, 9)]
    assert decisions == [CONTINUE] * 7 + [STOP]
    assert placed(reports.scheduler, "warm") == {8: 40.0}
    assert reports.restored().rungs() == reports.scheduler.rungs()


def test_a_trial_completing_inside_its_warm_up_is_in_no_rung_live_or_restored(tmp_path):
    """A trial whose schedule ends inside its warm-up (3 epochs, all warm-up) completes with
    a result no rung judges: neither the live scheduler (Ray's ``on_trial_complete`` skips
    the warm-up check) nor the one rebuilt after a resume records it."""
    reports = Reports(tmp_path, max_t=8)  # rungs at 1, 2, 4 and 8
    for epoch in (1, 2):
        reports.report("peer", epoch, 50.0)
    for epoch in (1, 2):
        assert reports.report("short", epoch, 10.0, warmup_epochs=3.0) == CONTINUE
    reports.report("short", 3, 10.0, complete=True, warmup_epochs=3.0)
    assert placed(reports.scheduler, "short") == {}
    assert reports.restored().rungs() == reports.scheduler.rungs()


def test_a_completion_after_the_warm_up_goes_into_the_rung_it_reached(tmp_path):
    """The result a trial completes with is recorded by the rule of a live result: in the
    rung its epoch reached, live and restored alike."""
    reports = Reports(tmp_path, max_t=8)
    for epoch in (1, 2):
        reports.report("done", epoch, 30.0, warmup_epochs=1.0)
    reports.report("done", 3, 35.0, complete=True, warmup_epochs=1.0)  # no rung at 3
    reports.report("four", 4, 20.0, complete=True)  # its first result: the rung at 4
    assert placed(reports.scheduler, "done") == {2: 30.0}
    assert placed(reports.scheduler, "four") == {4: 20.0}
    assert reports.restored().rungs() == reports.scheduler.rungs()


def test_hyperband_brackets_per_group_and_kept_across_a_restore(tmp_path):
    """With three brackets (asynchronous Hyperband) each group has its own three: bracket s
    starts judging at grace * rf**s, and a trial in the last one runs to the end however low
    it scores. A trial's bracket follows from its id, so a restored scheduler puts it in the
    same one; Ray's odds: the bracket with the most rungs takes the most trials."""
    settings = {"max_t": 8, "grace_period": 2, "brackets": 3, "metric": "objective", "mode": "max"}
    sched = asha(group_by="model.backbone", **settings)
    assert [[m for m, _ in b._rungs] for b in sched._brackets] == [[8, 4, 2], [8, 4], [8]]
    ids = [f"{i:08x}" for i in range(300)]
    index = {tid: sched.bracket_index(tid) for tid in ids}
    again = pickle.loads(pickle.dumps(asha(group_by="model.backbone", **settings)))
    assert index == {tid: again.bracket_index(tid) for tid in ids}
    counts = np.bincount(list(index.values()), minlength=3)
    assert counts[0] > counts[1] > counts[2] > 0, counts  # odds 0.67, 0.24, 0.09

    controller = Controller()
    first = [t for t in ids if index[t] == 0]
    peers = {"vit": first[:4], "rn": first[4:8]}
    by_bracket = {0: first[8], 2: next(t for t in ids if index[t] == 2)}
    for group, tids in peers.items():
        for k, tid in enumerate(tids):  # four strong peers per group fill bracket-0 rungs
            trial = make_trial(tid, str(tmp_path))
            trial.config = {"model.backbone": group}
            sched.on_trial_add(controller, trial)
            assert sched._trial_info[tid] is sched._groups[group][0]
            sched.on_trial_result(controller, trial, {"epoch": 2, "objective": 50.0 + k})
    assert sched._groups["vit"][0] is not sched._groups["rn"][0]
    decisions = {}
    for s, tid in by_bracket.items():
        trial = make_trial(tid, str(tmp_path))
        trial.config = {"model.backbone": "vit"}
        sched.on_trial_add(controller, trial)
        decisions[s] = [
            sched.on_trial_result(controller, trial, {"epoch": e, "objective": 1.0})
            for e in range(1, 8)
        ]
    assert decisions[0][1] == STOP  # bracket 0: cut at its first rung, epoch 2
    assert decisions[2] == [CONTINUE] * 7  # the last bracket: no rung before the end


def test_no_rung_judges_a_trial_before_the_share_of_its_schedule_the_space_sets(tmp_path):
    """``tune.scheduler.judge_after`` (a share of the trial's epochs, reported as
    ``judge_from_epoch``): rungs before it pass the trial; the first rung at or after it
    judges it."""
    controller = Controller()
    sched = asha(max_t=8, grace_period=1, reduction_factor=2, metric="objective", mode="max")
    trials = {}
    for tid in ("peer", "late"):
        trials[tid] = make_trial(tid, str(tmp_path))
        sched.on_trial_add(controller, trials[tid])

    def report(tid, epoch, value):
        result = {"epoch": epoch, "objective": value, "judge_from_epoch": 4.0}
        return sched.on_trial_result(controller, trials[tid], result)

    for epoch in (1, 2, 4):
        report("peer", epoch, 50.0)
    assert [report("late", e, 10.0) for e in (1, 2, 3)] == [CONTINUE] * 3
    assert all("late" not in recorded for milestone, recorded in sched.rungs()[None])
    assert report("late", 4, 10.0) == STOP  # epoch 4 = half of 8: judged, and cut


def test_a_scheduler_pickled_by_the_previous_version_still_resumes(tmp_path):
    """tuner.pkl of a search started before per-group brackets holds one empty bracket;
    restored now it runs as one bracket, groups included."""
    old = asha(group_by="model.backbone", metric="objective", mode="max")
    old._empty_bracket = old.__dict__.pop("_empty_brackets")[0]
    sched = pickle.loads(pickle.dumps(old))
    trial = make_trial("a", str(tmp_path))
    trial.config = {"model.backbone": "vit"}
    sched.on_trial_add(Controller(), trial)
    assert sched.on_trial_result(Controller(), trial, {"epoch": 1, "objective": 1.0}) == CONTINUE
    assert dict(sched.rungs()["vit"])[1] == {"a": 1.0}
