"""Tune's saved driver state: every read or rewrite of its private files lives here.

A search's experiment folder holds what Ray Tune needs to restore it, in files whose names
and contents are Tune's own, not its API (as in ray 2.60):

- ``tuner.pkl``: the pickled Tuner, written when the search starts;
- ``experiment_state-<session>.json``: the trial list, one per save, the newest wins;
- ``search_gen_state-<session>.json``: a cloudpickled dict, the search generator's
  ``counter`` (trials created) and ``finished``, and each searcher wrapper's attributes
  under ``name:<class>``; ``name:ConcurrencyLimiter`` holds ``live_trials`` (a set of trial
  ids) and ``num_unfinished_live_trials``.

Each function checks that Ray still names its files so and that what it reads has the
keys and types above. When the format moved it raises ``TuneStateError``, naming the
installed Ray and what differed; it never falls back to a default. ``pyproject.toml`` pins
Ray to the versions this was tested with.
"""

from __future__ import annotations

import fnmatch
import logging

from handreid.errors import HandReIDError

log = logging.getLogger(__name__)

TESTED_RAY = "2.60"  # the Ray minor version whose files these are; pyproject.toml pins it
TUNER_FILE = "tuner.pkl"
TRIALS_FILES = "experiment_state-*.json"
SEARCH_FILES = "search_gen_state-*.json"
LIMITER = "name:ConcurrencyLimiter"
SEARCH_KEYS = {"counter": int, "finished": bool, LIMITER: dict}
LIMITER_KEYS = {"live_trials": set, "num_unfinished_live_trials": int}
ENDED = ("TERMINATED", "ERROR")  # Tune's trial states that a resume does not continue


class TuneStateError(HandReIDError):
    """Tune's saved state is not in the format this module reads, or is incomplete."""


def state_error(where: str, what: str) -> TuneStateError:
    import ray

    return TuneStateError(
        f"{where}: {what}: not Ray Tune's saved state as this project reads it "
        f"(tested with ray {TESTED_RAY}.x; installed: ray {ray.__version__})"
    )


def ray_file_names() -> dict[str, str]:
    """The names Ray itself gives its files now, keyed by the name expected here."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.impl.tuner_internal import _TUNER_PKL
    from ray.tune.search import SearchGenerator

    return {
        TUNER_FILE: _TUNER_PKL,
        TRIALS_FILES: TuneController.CKPT_FILE_TMPL.format("*"),
        SEARCH_FILES: SearchGenerator.CKPT_FILE_TMPL.format("*"),
    }


def check_file_names(where: str) -> None:
    """Raise when Ray no longer names its files as this module expects."""
    try:
        names = ray_file_names()
    except (ImportError, AttributeError) as err:
        raise state_error(where, f"Ray's names for its files are gone ({err})") from err
    moved = [f"{now!r} (expected {old!r})" for old, now in names.items() if now != old]
    if moved:
        raise state_error(where, "Ray names its files " + ", ".join(moved))


def listing(path: str):
    """The folder's filesystem, its path there, and the names in it (none if it is absent)."""
    import pyarrow.fs

    check_file_names(path)
    fs, root = pyarrow.fs.FileSystem.from_uri(path)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    return fs, root, {info.base_name for info in infos}


def has_state(path: str) -> bool:
    """Whether Tune saved a search's state there: its tuner and a snapshot of its trials."""
    _, _, names = listing(path)
    return TUNER_FILE in names and bool(fnmatch.filter(names, TRIALS_FILES))


def saved_trials(path: str) -> list:
    """The trials of Tune's newest experiment state snapshot, as a restore would load them."""
    from ray.tune import ExperimentAnalysis

    _, _, names = listing(path)
    if not fnmatch.filter(names, TRIALS_FILES):
        raise state_error(path, f"no trial list ({TRIALS_FILES})")
    try:
        return ExperimentAnalysis(path).trials
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise state_error(path, f"the trial list is unreadable ({err!r})") from err


def search_finished(path: str, num_samples: int) -> bool:
    """Whether the search ran to its end. After a stop signal ``fit`` returns normally and
    Tune's in-memory trials all read TERMINATED (stopping marks them so), so the answer comes
    from the snapshot Tune saved before stopping: every trial ended, and all were created."""
    trials = saved_trials(path)
    return len(trials) >= num_samples and all(t.status in ENDED for t in trials)


def search_state_file(path: str):
    """``(filesystem, path)`` of the newest search generator state, as Tune's restore picks
    it; None when Tune saved nothing there yet. Its absence next to a trial list or a tuner
    is an error: Tune would restore a search that starts counting again from zero."""
    fs, root, names = listing(path)
    found = fnmatch.filter(names, SEARCH_FILES)
    if found:
        return fs, f"{root}/{max(found)}"
    others = sorted(fnmatch.filter(names, TRIALS_FILES) + [n for n in names if n == TUNER_FILE])
    if others:
        raise state_error(path, f"no search generator state ({SEARCH_FILES}) next to {others}")
    return None


def check_keys(state, expected: dict[str, type], where: str, prefix: str = "") -> None:
    """Raise unless ``state`` is a dict with each expected key, of the expected type."""
    if not isinstance(state, dict):
        raise state_error(where, f"{prefix or 'the state'} is a {type(state).__name__}")
    for key, kind in expected.items():
        if key not in state:
            found = ", ".join(sorted(map(str, state)))
            raise state_error(where, f"no key {prefix}{key} (found: {found})")
        if not isinstance(state[key], kind):
            name = type(state[key]).__name__
            raise state_error(where, f"{prefix}{key} is a {name}, not a {kind.__name__}")


def read_search_state(fs, file: str) -> dict:
    """The search generator state in ``file``, checked against the format expected here."""
    import ray.cloudpickle as cloudpickle

    with fs.open_input_stream(file) as f:
        state = cloudpickle.loads(f.readall())
    check_keys(state, SEARCH_KEYS, file)
    check_keys(state[LIMITER], LIMITER_KEYS, file, f"{LIMITER}.")
    return state


def write_search_state(fs, file: str, state: dict) -> None:
    """Replace ``file`` with ``state``: written aside, then moved over it."""
    import ray.cloudpickle as cloudpickle

    folder, name = file.rsplit("/", 1)
    tmp = f"{folder}/.aligned-{name}"
    with fs.open_output_stream(tmp) as f:
        f.write(cloudpickle.dumps(state))
    fs.move(tmp, file)


def align_search_state(path: str, trials: list) -> None:
    """Make the saved search generator agree with the saved trial list before a restore.

    Tune writes its driver state to a staging folder and copies it to storage file by file,
    in the background. A driver killed during that copy leaves files of two snapshots: a
    search generator that already counted trials the trial list never got. Restored as is,
    the search ends short of ``num_samples`` (it believes those trials were created), and the
    concurrency limiter holds slots for trials that will never run. Here the count becomes
    the trial list's length and the limiter's live trials the unfinished ones of the list;
    the study trials of the missing ones are failed as lost (``fail_lost_trials``)."""
    found = search_state_file(path)
    if found is None:
        return  # Tune saved nothing here yet: nothing to align
    fs, file = found
    state = read_search_state(fs, file)
    live = {t.trial_id for t in trials if t.status not in ENDED}
    limiter = state[LIMITER]
    if state["counter"] == len(trials) and set(limiter["live_trials"]) == live:
        return
    log.warning(
        "the saved search state (%d trials created) disagrees with the saved trial list "
        "(%d trials), from a driver killed while saving: aligned with the trial list",
        state["counter"],
        len(trials),
    )
    state["counter"] = len(trials)
    state["finished"] = False  # trials the list lacks are to be created again
    limiter["live_trials"] = live
    limiter["num_unfinished_live_trials"] = len(live)
    write_search_state(fs, file, state)
