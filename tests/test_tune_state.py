"""The seam to Tune's saved driver state (search.tune_state): it reads the files of a real
tiny Tune run, and fails loudly, naming the installed Ray, on a state whose format moved."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")

import ray  # noqa: E402
import ray.cloudpickle as cloudpickle  # noqa: E402

from search import tune_state  # noqa: E402
from search.tune_state import (  # noqa: E402
    TuneStateError,
    align_search_state,
    has_state,
    saved_trials,
    search_finished,
)

SEARCH_FILE = "search_gen_state-2026-01-01_00-00-00.json"


def trial(tid: str, status: str = "RUNNING"):
    return SimpleNamespace(trial_id=tid, status=status)


def tune_state_dict(counter: int = 2, live=("a",)) -> dict:
    """A search generator state as Tune 2.60 pickles it (the keys the seam reads)."""
    limiter = {"max_concurrent": 2, "live_trials": set(live), "num_unfinished_live_trials": 1}
    return {
        "counter": counter,
        "total_samples": 4,
        "finished": False,
        "experiment": None,
        "name:ConcurrencyLimiter": limiter,
    }


def saved(folder: Path, state, name: str = SEARCH_FILE) -> Path:
    """An experiment folder as Tune leaves it: its tuner, a trial list, the search state."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tuner.pkl").write_bytes(b"")
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    (folder / name).write_bytes(cloudpickle.dumps(state))
    return folder / name


def check_loud(err: pytest.ExceptionInfo, *words: str) -> None:
    message = str(err.value)
    assert f"installed: ray {ray.__version__}" in message and "tested with ray 2.60" in message
    for word in words:
        assert word in message, message


def test_an_aligned_state_is_left_as_it_is(tmp_path):
    path = saved(tmp_path, tune_state_dict())
    before = path.read_bytes()
    align_search_state(str(tmp_path), [trial("a"), trial("b", "TERMINATED")])
    assert path.read_bytes() == before


def test_a_torn_state_is_aligned_with_the_trial_list(tmp_path):
    path = saved(tmp_path, tune_state_dict(counter=4, live=("a", "lost1", "lost2")))
    align_search_state(str(tmp_path), [trial("a"), trial("b", "ERROR")])
    state = cloudpickle.loads(path.read_bytes())
    assert state["counter"] == 2 and state["finished"] is False
    limiter = state["name:ConcurrencyLimiter"]
    assert limiter["live_trials"] == {"a"} and limiter["num_unfinished_live_trials"] == 1
    assert limiter["max_concurrent"] == 2  # the rest is kept
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def renamed_limiter(state):
    state["name:ConcurrencyLimiterV2"] = state.pop("name:ConcurrencyLimiter")


def renamed_live_trials(state):
    limiter = state["name:ConcurrencyLimiter"]
    limiter["live_trial_ids"] = limiter.pop("live_trials")


@pytest.mark.parametrize(
    "change, words",
    [
        (renamed_limiter, ["no key name:ConcurrencyLimiter", "name:ConcurrencyLimiterV2"]),
        (lambda s: s.pop("counter"), ["no key counter (found: "]),
        (lambda s: s.pop("finished"), ["no key finished"]),
        (renamed_live_trials, ["no key name:ConcurrencyLimiter.live_trials", "live_trial_ids"]),
        (
            lambda s: s.update(counter="2"),
            ["counter is a str, not a int"],
        ),
        (
            lambda s: s["name:ConcurrencyLimiter"].update(live_trials=["a"]),
            ["name:ConcurrencyLimiter.live_trials is a list, not a set"],
        ),
    ],
    ids=[
        "limiter renamed",
        "no counter",
        "no finished",
        "live trials renamed",
        "counter a str",
        "live trials a list",
    ],
)
def test_a_changed_search_state_fails_loudly(tmp_path, change, words):
    state = tune_state_dict(counter=4)  # torn too: it would be rewritten
    change(state)
    path = saved(tmp_path, state)
    before = path.read_bytes()
    with pytest.raises(TuneStateError) as err:
        align_search_state(str(tmp_path), [trial("a")])
    check_loud(err, path.name, *words)
    assert path.read_bytes() == before  # nothing rewritten


def test_a_state_that_is_no_dict_fails_loudly(tmp_path):
    saved(tmp_path, [("counter", 2)])
    with pytest.raises(TuneStateError) as err:
        align_search_state(str(tmp_path), [trial("a")])
    check_loud(err, "the state is a list")


def test_a_renamed_search_state_file_fails_loudly(tmp_path):
    """The trial list is there, the search state under another name: Tune itself would
    restore a search generator counting from zero (more trials than ``num_samples``)."""
    saved(tmp_path, tune_state_dict(), name="search_generator_state-2026-01-01.pkl")
    with pytest.raises(TuneStateError) as err:
        align_search_state(str(tmp_path), [trial("a")])
    check_loud(err, "no search generator state (search_gen_state-*.json) next to")


def test_files_renamed_by_ray_fail_loudly(tmp_path, monkeypatch):
    """The names Ray gives its files are checked against the expected ones before any read."""
    from ray.tune.search import SearchGenerator

    saved(tmp_path, tune_state_dict())
    monkeypatch.setattr(SearchGenerator, "CKPT_FILE_TMPL", "search_gen_state-{}.pkl")
    for read in (has_state, saved_trials, lambda p: align_search_state(p, [])):
        with pytest.raises(TuneStateError) as err:
            read(str(tmp_path))
        check_loud(err, "'search_gen_state-*.pkl' (expected 'search_gen_state-*.json')")


def test_a_folder_where_tune_saved_nothing_has_no_state(tmp_path):
    (tmp_path / "search.json").write_text("{}")  # the driver's own file, before Tune's
    assert not has_state(str(tmp_path))
    align_search_state(str(tmp_path), [])  # nothing to align
    with pytest.raises(TuneStateError) as err:
        saved_trials(str(tmp_path))
    check_loud(err, "no trial list (experiment_state-*.json)")


# ------------------------------------------------------------------ a real Tune run


@pytest.fixture(scope="module")
def tiny_run(ray_local, tmp_path_factory) -> str:
    """Tune's files of a finished search of two one-result trials in one reused actor, with
    a ConcurrencyLimiter around the searcher as in the search and the confirmation."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter, Searcher

    class Counting(Searcher):
        def __init__(self):
            super().__init__(metric="objective", mode="max")
            self.n = 0

        def suggest(self, trial_id):
            self.n += 1
            return {"x": float(self.n)}

        def on_trial_complete(self, trial_id, result=None, error=False):
            pass

    def trainable(config):
        tune.report({"objective": config["x"], "epoch": 1})

    storage = tmp_path_factory.mktemp("tune")
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(Counting(), max_concurrent=1),
            num_samples=2,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name="tiny", storage_path=str(storage), verbose=0),
    )
    assert not tuner.fit().errors
    return str(storage / "tiny")


def test_the_files_of_a_real_tune_run_are_read_as_expected(tiny_run):
    """The installed Ray writes what the seam reads: a format change fails here."""
    assert has_state(tiny_run)
    trials = saved_trials(tiny_run)
    assert len(trials) == 2 and {t.status for t in trials} == {"TERMINATED"}
    assert search_finished(tiny_run, 2) and not search_finished(tiny_run, 3)
    fs, file = tune_state.search_state_file(tiny_run)
    state = tune_state.read_search_state(fs, file)
    assert state["counter"] == 2 and state["name:ConcurrencyLimiter"]["live_trials"] == set()
    before = Path(file).read_bytes()
    align_search_state(tiny_run, trials)
    assert Path(file).read_bytes() == before  # in step: untouched


def test_a_real_torn_state_is_aligned_and_still_loads(tiny_run):
    """The torn state of a driver killed while copying, made from the real file, aligned
    and read back by Tune's own loader."""
    from ray.tune.utils.util import _load_newest_checkpoint

    fs, file = tune_state.search_state_file(tiny_run)
    state = tune_state.read_search_state(fs, file)
    state["counter"] += 2
    state["name:ConcurrencyLimiter"]["live_trials"] |= {"lost0001", "lost0002"}
    state["name:ConcurrencyLimiter"]["num_unfinished_live_trials"] += 2
    tune_state.write_search_state(fs, file, state)
    align_search_state(tiny_run, saved_trials(tiny_run))
    loaded = _load_newest_checkpoint(tiny_run, "search_gen_state-*.json")
    assert loaded["counter"] == 2 and loaded["finished"] is False
    assert loaded["name:ConcurrencyLimiter"]["live_trials"] == set()
    assert loaded["name:ConcurrencyLimiter"]["num_unfinished_live_trials"] == 0
