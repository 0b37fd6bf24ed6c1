"""Stop, resume and faults: signals, restoring a search, and what a killed driver left.

``stop_signals`` makes SIGTERM stop a search the way Ctrl-C does (``SearchStopped`` then
says so, and ``--resume`` goes on). On resume, ``check_resume`` refuses a changed space or
sample count, ``restore_tuner`` restores Tune's state (aligned first, see
``search.tune_state``), ``fail_lost_trials`` closes study trials no one will finish, and the
``set_aside_*orphans`` functions move trial folders Tune no longer knows out of the way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from pathlib import Path

from handreid.errors import HandReIDError
from search.launch import make_trainable
from search.rundir import SearchOptions, local_run_dir, search_meta, study_storage
from search.space import SearchSpace
from search.tune_state import ENDED, align_search_state, saved_trials

log = logging.getLogger(__name__)


class SearchStopped(Exception):
    """A signal stopped the search before it finished; Tune saved its state for ``--resume``."""

    def __init__(self, signum: int, path: str, stage: str = "search"):
        self.signum, self.path = signum, path
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} before the {stage} finished (state saved in {path})")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def restore_tuner(space: SearchSpace, opts: SearchOptions, path: str):
    """The Tuner of a stopped or killed search, after failing the study trials it will not
    continue. Errored trials stay as they ended unless ``opts.retry_failed`` (Tune runs them
    again outside the concurrency limit, and the study keeps their first ending)."""
    from ray import tune

    rerun = ("ERROR",) if opts.retry_failed else ()
    trials = saved_trials(path)
    continued = {t.trial_id for t in trials if t.status not in ENDED or t.status in rerun}
    align_search_state(path, trials)
    fail_lost_trials(local_run_dir(opts), keep=continued, requeue=True)
    return tune.Tuner.restore(
        path,
        trainable=make_trainable(space, opts, local_run_dir(opts)),
        resume_unfinished=True,
        resume_errored=opts.retry_failed,
    )


class StopSignals:
    """Which signal stopped the search; SIGINT unless a SIGTERM arrived."""

    def __init__(self):
        self.signum = signal.SIGINT

    def on_sigterm(self, signum, frame) -> None:
        """Stop as on Ctrl-C: hand the signal to whatever handles SIGINT now (inside ``fit``,
        Tune, which stops the trials and saves the experiment state one last time)."""
        self.signum = signal.SIGTERM
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):  # SIGINT ignored or at its C default: still stop
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)


class _NoTuneResumeHint(logging.Filter):
    """Tune's own "resume with Tuner.restore(...)" hint: the CLI prints the command instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Experiment has been interrupted")


@contextlib.contextmanager
def stop_signals():
    """Inside this block SIGTERM stops the search the way Ctrl-C does. Ray Tune 2.60 catches
    SIGINT inside ``fit`` (and SIGUSR1) but not SIGTERM, on which Ray's crash handler aborts
    the driver at once. Both handlers are put back afterwards: Tune leaves its SIGINT handler
    installed after a run no signal stopped, so Ctrl-C during the wrap-up would do nothing."""
    stop = StopSignals()
    tune_log = logging.getLogger("ray.tune.tune")
    hint = _NoTuneResumeHint()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be set in the main thread
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, stop.on_sigterm)
    tune_log.addFilter(hint)
    try:
        yield stop
    finally:
        tune_log.removeFilter(hint)
        for signum, handler in old.items():  # None: set outside Python, not restorable
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def check_resume(space: SearchSpace, opts: SearchOptions) -> None:
    """A resume continues the search it was started as: Tune restores its own searcher,
    scheduler and sample count, while trials would run on the space given now. So a space
    that differs from the recorded one, or a different --num-samples or --max-concurrent,
    is refused rather than half applied."""
    run_dir = local_run_dir(opts)
    meta_path = run_dir / "search.json"
    if not meta_path.is_file():
        return
    old = json.loads(meta_path.read_text())
    new = json.loads(json.dumps(search_meta(space, opts), default=str))
    change = space_change(old, new)
    if change:
        raise HandReIDError(
            f"{space.source}: {change}, unlike the space {old.get('space')} that started "
            f"{run_dir}; resume with that space, or start a new search with --name"
        )
    for flag, key in (("--num-samples", "num_samples"), ("--max-concurrent", "max_concurrent")):
        value = getattr(opts, key)
        if value is not None and value != old.get(key):
            raise HandReIDError(
                f"{flag} {value}: the search was started with {old.get(key, 'another value')} "
                "and a resume keeps it; start a new search with --name to change it"
            )


def space_change(old: dict, new: dict) -> str | None:
    """The first difference between two recorded spaces (search.json), in words. Keys the
    older record lacks are not compared; the space file's path may change."""
    added = [k for k in new["params"] if k not in old.get("params", [])]
    gone = [k for k in old.get("params", []) if k not in new["params"]]
    if added or gone:
        return f"search.{(added or gone)[0]} is {'new' if added else 'gone'}"
    for section in ("distributions", "fixed", "tune"):
        if section not in old:
            continue
        before, after = old[section], new[section]
        for key in [*before, *(k for k in after if k not in before)]:
            a, b = before.get(key), after.get(key)
            if a == b:
                continue
            where = "search" if section == "distributions" else section
            if key not in before or key not in after:
                return f"{where}.{key} is {'new' if key not in before else 'gone'}"
            if isinstance(a, dict) and isinstance(b, dict):
                field = next(f for f in [*a, *b] if a.get(f) != b.get(f))
                return f"{where}.{key}.{field} is {b.get(field)!r} (was {a.get(field)!r})"
            return f"{where}.{key} is {b!r} (was {a!r})"
    for key in ("metric", "mode", "max_epochs"):
        if key in old and old[key] != new[key]:
            return f"{key} is {new[key]!r} (was {old[key]!r})"
    return None


def set_aside_orphans(run_dir: Path, grid) -> int:
    """Trial folders that Tune no longer knows (created by a killed driver after its last
    state snapshot, then re-suggested as new trials on --resume) move to orphaned/: kept,
    but out of the way of trials.csv and the report."""
    known = {Path(r.path).name for r in grid}
    orphans = [p for p in run_dir.glob("trial_*") if p.is_dir() and p.name not in known]
    for folder in orphans:
        (run_dir / "orphaned").mkdir(exist_ok=True)
        folder.rename(run_dir / "orphaned" / folder.name)
    if orphans:
        log.warning(
            "moved %d trial folders unknown to the resumed search to %s",
            len(orphans),
            run_dir / "orphaned",
        )
    return len(orphans)


def set_aside_stored_orphans(uri: str, grid) -> int:
    """``set_aside_orphans`` on URI storage: trial folders of the experiment that Tune no
    longer knows move to ``orphaned/`` there (where the store cannot move a folder, they stay,
    with a warning)."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(uri)
    known = {Path(r.path).name for r in grid}
    selector = pyarrow.fs.FileSelector(root, allow_not_found=True)
    orphans = [
        info.base_name
        for info in fs.get_file_info(selector)
        if info.type == pyarrow.fs.FileType.Directory
        and info.base_name.startswith("trial_")
        and info.base_name not in known
    ]
    for name in orphans:
        try:
            fs.create_dir(f"{root}/orphaned", recursive=True)
            fs.move(f"{root}/{name}", f"{root}/orphaned/{name}")
        except OSError as err:
            log.warning("trial folder %s unknown to the resumed search stays: %s", name, err)
    if orphans:
        log.warning(
            "moved %d trial folders unknown to the resumed search to %s/orphaned",
            len(orphans),
            uri,
        )
    return len(orphans)


def fail_lost_trials(run_dir: Path, keep: set[str] = frozenset(), requeue: bool = False) -> int:
    """Study trials left RUNNING by a killed driver are marked FAIL ("driver lost"), so TPE's
    constant liar stops counting them as running. On resume this runs before Tune starts;
    ``keep`` names the Tune trials the restored search continues: the restored searcher maps
    each to its study trial (by the pickled Optuna trial), and its results land there.

    ``requeue`` (on resume): a lost trial that was a start point (Ray's OptunaSearch enqueues
    them in the study, and Optuna's ask marks the trial with its ``fixed_params``) is queued
    again, so the resumed search runs it; otherwise a start point asked just before the crash
    would never run."""
    import optuna

    from search.optuna_search import LOST

    storage = study_storage(run_dir)
    lost = 0
    for summary in optuna.get_all_study_summaries(storage):
        requeued = []
        for trial in storage.get_all_trials(summary._study_id):
            if trial.state != optuna.trial.TrialState.RUNNING:
                continue
            if trial.user_attrs.get("ray_trial_id") in keep:
                continue
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", LOST)
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            lost += 1
            if requeue and "fixed_params" in trial.system_attrs:
                requeued.append((trial.number, trial.system_attrs["fixed_params"]))
        if requeued:
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            for number, params in requeued:
                study.enqueue_trial(params, user_attrs={"requeued_from": number})
            log.warning("%d start points of lost trials queued again", len(requeued))
    if lost:
        log.warning("%d study trials of a lost driver, not continued, marked FAIL", lost)
    return lost
