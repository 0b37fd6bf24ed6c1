"""The run directory and its storage: where a search's files go, and what it records there.

A search has two places. Tune's experiment folder (``experiment_path``) holds Tune's state
and the trials; the run directory (``local_run_dir``) holds the summary files, the Optuna
study (``study.db``), ``search.json`` (the recorded settings a resume compares against and
the analysis reads) and ``scratch/``. With a folder as storage they are one folder; with a
URI the run directory is local, and ``search.json`` and the study copy also go to the
storage, so a resume on another head finds them (``pin_run_dir``, ``fetch_run_files``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from handreid.errors import HandReIDError
from search.space import SearchSpace

log = logging.getLogger(__name__)


STUDY_FILE = "study.db"
SCRATCH = "scratch"  # trials' state folders, with a storage path (see search.trainable)


@dataclass
class SearchOptions:
    name: str
    storage: str  # local folder or a pyarrow filesystem URI
    run_dir: str | None = None  # with URI storage: the local folder of summaries and study
    address: str | None = None
    resume: bool = False
    num_samples: int | None = None
    max_concurrent: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | str | None = None  # "auto": by each trial's memory estimate
    gpu_memory: float | None = None  # GiB of the smallest GPU (default: asked of the GPUs)
    stage1_cache: bool = True
    verbose: int = 0  # 1: Ray Tune's live trial tables
    progress: bool = True  # a line per finished trial, and a progress bar on a terminal
    retry_failed: bool = False  # on resume, run errored trials again
    confirm_seeds: int | None = None  # confirmation seeds (default: the space's tune.confirm)
    score_seeds: int | None = None  # fresh seeds that score each winner (default: the space's)


def is_uri(storage: str) -> bool:
    return "://" in storage


RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in the driver of a submitted job


def default_runs_root() -> Path:
    """The default folder of run directories (and ``--storage``): ``$HANDREID_RUNS``, else
    ``runs`` in the working directory (``make demo`` writes ``runs/demo``), except in the
    driver of a Ray job: ``~/handreid-runs``. A job runs in a copy of the project that Ray
    unpacks anew for each submission, so a resubmitted ``--resume`` would look elsewhere."""
    if os.environ.get("HANDREID_RUNS"):
        return Path(os.environ["HANDREID_RUNS"]).expanduser().resolve()
    if RAY_JOB_ENV in os.environ:
        return Path.home() / "handreid-runs"
    return Path("runs").resolve()


def default_storage() -> str:
    """``--storage`` when not given: ``$HANDREID_STORAGE`` (a folder or a URI), else the
    default runs folder; a folder is made absolute here, at startup."""
    storage = os.environ.get("HANDREID_STORAGE") or str(default_runs_root())
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def local_run_dir(opts: SearchOptions) -> Path:
    """Where the summary files and the study go: the experiment folder with a folder as
    storage; with URI storage ``opts.run_dir``, else ``<default runs root>/<name>``."""
    if not is_uri(opts.storage):
        return Path(opts.storage).expanduser().resolve() / opts.name
    if opts.run_dir:
        return Path(opts.run_dir).expanduser().resolve()
    return default_runs_root() / opts.name


def pin_run_dir(opts: SearchOptions) -> SearchOptions:
    """The options with an absolute ``run_dir``, fixed for the whole search. With URI storage
    a resume without ``--run-dir`` takes the run directory the search recorded in its
    ``search.json`` on the storage, so the same command finds it again (e.g. where
    ``$HANDREID_RUNS`` differs). With a folder as storage it is ``<storage>/<name>``."""
    from dataclasses import replace

    if not is_uri(opts.storage):
        run_dir = local_run_dir(opts)
        if opts.run_dir and Path(opts.run_dir).expanduser().resolve() != run_dir:
            raise HandReIDError(
                f"--run-dir {opts.run_dir}: with a folder as --storage the run directory is "
                f"the experiment folder, {run_dir}; --run-dir is for URI storage"
            )
        return replace(opts, run_dir=str(run_dir))
    if not opts.run_dir and opts.resume:
        recorded = stored_search_meta(experiment_path(opts)).get("run_dir")
        if recorded:
            return replace(opts, run_dir=recorded)
    return replace(opts, run_dir=str(local_run_dir(opts)))


def experiment_path(opts: SearchOptions) -> str:
    """Tune's experiment folder: the same as the run directory unless storage is a URI."""
    if is_uri(opts.storage):
        return opts.storage.rstrip("/") + "/" + opts.name
    return str(local_run_dir(opts))


def scratch_root(opts: SearchOptions) -> str | None:
    return None if is_uri(opts.storage) else str(local_run_dir(opts) / SCRATCH)


def study_storage(run_dir: Path):
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{(run_dir / STUDY_FILE).resolve()}")


def study_name(opts: SearchOptions) -> str:
    return f"handreid-{opts.name}"


def stored_search_meta(path: str) -> dict[str, Any]:
    """The search.json kept in the experiment folder on URI storage, or {} if none."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(path)
    if fs.get_file_info(f"{root}/search.json").type != pyarrow.fs.FileType.File:
        return {}
    with fs.open_input_stream(f"{root}/search.json") as f:
        return json.loads(f.readall())


def fetch_run_files(opts: SearchOptions, path: str) -> None:
    """On a resume with URI storage, fill a run directory that lacks them (a new head, or the
    folder deleted) with ``search.json`` and the study copy from the experiment folder on
    the storage. Done here, before Tune restores, rather than in the searcher's
    ``restore_from_dir``: ``check_resume`` and ``fail_lost_trials`` read both first, Tune
    downloads only its .json and .pkl files, and the searcher does not know the storage."""
    import pyarrow.fs

    from search.optuna_search import SNAPSHOT_FILE

    run_dir = local_run_dir(opts)
    fs, root = pyarrow.fs.FileSystem.from_uri(path)
    for remote, local in (("search.json", "search.json"), (SNAPSHOT_FILE, STUDY_FILE)):
        target = run_dir / local
        if target.exists() or fs.get_file_info(f"{root}/{remote}").type != pyarrow.fs.FileType.File:
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{local}.tmp")
        with fs.open_input_stream(f"{root}/{remote}") as src:
            tmp.write_bytes(src.readall())
        tmp.replace(target)
        log.warning("%s was not in %s: taken from the storage (%s)", local, run_dir, path)


def mirror_results(uri: str, local: Path) -> None:
    """Copy each trial's params.json and result.json from URI storage, for the report."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(uri)
    selector = pyarrow.fs.FileSelector(root, recursive=True)
    for info in fs.get_file_info(selector):
        rel = Path(info.path).relative_to(root)
        if (
            len(rel.parts) == 2
            and rel.parts[0].startswith("trial_")
            and rel.name in ("params.json", "result.json")
        ):
            (local / rel.parent).mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as src:
                (local / rel).write_bytes(src.read())


# read anew on resume; the rest of the tune block lives on in Tune's pickled state (the
# confirmation runs after the search, in experiments of its own: see search.confirm)
HONOURED_ON_RESUME = ("cpus_per_trial", "gpus_per_trial", "confirm")


def search_meta(space: SearchSpace, opts: SearchOptions) -> dict[str, Any]:
    """What the analysis needs to read the run without Ray or the space file, and what a
    resume compares against."""
    t = space.tune
    return {
        "name": opts.name,
        "space": space.source,
        "space_file": str(Path(space.source).resolve()),  # for `--confirm RUN_DIR`
        "storage": opts.storage,
        "run_dir": str(local_run_dir(opts)),
        "metric": t.metric,
        "mode": t.mode,
        "num_samples": opts.num_samples or t.num_samples,
        "max_concurrent": opts.max_concurrent or t.max_concurrent,
        "max_epochs": space.max_epochs,
        "base_backbone": space.base.model.backbone,
        "params": [p.key for p in space.params],
        "distributions": {
            b.name: {
                "key": p.key,
                "type": b.type,
                "low": b.low,
                "high": b.high,
                "log": b.log,
                "choices": list(b.choices),
                "when": dict(b.when),
            }
            for p in space.params
            for b in p.branches
        },
        "fixed": dict(space.fixed),
        "tune": {k: v for k, v in asdict(t).items() if k not in HONOURED_ON_RESUME},
        "data": data_meta(space.base.data),
    }


def data_meta(data) -> dict[str, Any]:
    """What the trials train on, for the report (synthetic or real, which split)."""
    from handreid.data.build import split_method

    real = bool(data.root or data.prepared)
    return {
        "synthetic": not real,
        "root": data.root,
        "prepared": data.prepared,
        "aspect": data.aspect,
        "split": split_method(data),
        "subset": data.subset,
    }


def write_search_meta(space: SearchSpace, opts: SearchOptions) -> None:
    run_dir = local_run_dir(opts)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "search.json.tmp"
    tmp.write_text(json.dumps(search_meta(space, opts), indent=2, default=str))
    tmp.replace(run_dir / "search.json")
    if is_uri(opts.storage):  # for a resume on another head (see pin_run_dir, fetch_run_files)
        import pyarrow.fs

        fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path(opts))
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(f"{root}/search.json") as f:
            f.write((run_dir / "search.json").read_bytes())


def read_search_meta(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "search.json").read_text())
