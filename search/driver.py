"""The search driver: Ray Tune Tuner + Optuna TPE + ASHA, resume, and the post-search steps.

After the search: the confirmation stage (``search.confirm``: the top configurations
trained again with more seeds), ``trials.csv`` (every trial and confirmation run), the
Optuna study (``study.db``), test scoring (the only time test data is read: the confirmed
winner's seeds, or without confirmation the top-k trials per backbone), and
``best/<backbone>/`` with the resolved config and checkpoint. A search stopped by Ctrl-C or
SIGTERM raises ``SearchStopped`` instead and writes none of these: ``--resume`` goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from handreid.config import dump_config
from handreid.errors import HandReIDError
from search.space import SearchSpace, config_key
from search.trainable import fetch_best
from search.tune_state import (  # noqa: F401  (confirm and cli import these from here)
    ENDED,
    align_search_state,
    saved_trials,
    search_finished,
)

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
    gpus_per_trial: float | None = None
    stage1_cache: bool = True
    verbose: int = 0  # 1: Ray Tune's live trial tables
    progress: bool = True  # a line per finished trial, and a progress bar on a terminal
    retry_failed: bool = False  # on resume, run errored trials again
    confirm_seeds: int | None = None  # confirmation seeds (default: the space's tune.confirm)
    score_seeds: int | None = None  # fresh seeds that score each winner (default: the space's)


class SearchStopped(Exception):
    """A signal stopped the search before it finished; Tune saved its state for ``--resume``."""

    def __init__(self, signum: int, path: str, stage: str = "search"):
        self.signum, self.path = signum, path
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} before the {stage} finished (state saved in {path})")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


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


def init_ray(address: str | None, num_gpus: float | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=ray_log_level())
    else:  # a local instance inside this command: no dashboard, no network needed, and no
        # joining a cluster that another `ray start` or search left running (address=None would)
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=ray_log_level(),
        )


def ray_log_level() -> int:
    """Ray's own log level: INFO, or what the command line asked (`handreid-search` without
    --verbose: WARNING, so no "Started a local Ray instance")."""
    return getattr(logging, os.environ.get("HANDREID_RAY_LOG_LEVEL", "INFO"), logging.INFO)


def build_tuner(space: SearchSpace, opts: SearchOptions):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search.progress import TrialSummary
    from search.strategy import build_scheduler, build_searcher

    t = space.tune
    run_dir = local_run_dir(opts)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainable = make_trainable(space, opts, run_dir)
    searcher = build_searcher(
        space, study_name=f"handreid-{opts.name}", storage=study_storage(run_dir)
    )
    scheduler = build_scheduler(space)
    tune_config = tune.TuneConfig(
        metric="objective",
        mode=t.mode,
        search_alg=ConcurrencyLimiter(
            searcher, max_concurrent=opts.max_concurrent or t.max_concurrent
        ),
        scheduler=scheduler,
        num_samples=opts.num_samples or t.num_samples,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
        # one process serves trial after trial: no actor start, torch and open_clip import
        # per trial (the demo's 24 trials: 96 s instead of about 170 s on 2 cores)
        reuse_actors=True,
    )
    run_config = tune.RunConfig(
        name=opts.name,
        storage_path=opts.storage if is_uri(opts.storage) else str(Path(opts.storage).resolve()),
        failure_config=tune.FailureConfig(max_failures=t.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=t.checkpoints_to_keep),
        callbacks=[
            *([TrialSummary(t.metric, opts.num_samples or t.num_samples)] if opts.progress else []),
            *scratch_keeper(space, opts),
        ],
        verbose=opts.verbose,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def make_trainable(space: SearchSpace, opts: SearchOptions, run_dir: Path, fn=None):
    """The search's trainable (``fn``: another function with ``run_trial``'s signature, e.g.
    the confirmation's), its resources, and what every run shares (the stage-1 cache)."""
    from ray import tune

    from search.trainable import run_trial

    extra: dict[str, Any] = {}
    if opts.stage1_cache and not is_uri(opts.storage):
        extra["train.stage1_cache"] = str(run_dir / "stage1_cache")  # shared by every trial
    elif not opts.stage1_cache:
        extra["train.stage1_reuse"] = False
    cpus, gpus = trial_resources(space, opts)
    if gpus == 0:
        extra["train.cpu"] = True
    scratch = None if is_uri(opts.storage) else str(run_dir / SCRATCH)
    trainable = tune.with_parameters(
        fn or run_trial, space=space, extra=extra, scratch_root=scratch
    )
    return tune.with_resources(trainable, {"cpu": cpus, "gpu": gpus})


def trial_resources(space: SearchSpace, opts: SearchOptions) -> tuple[float, float]:
    """CPUs and GPUs of one trial, and of one top-k evaluation task: the flags, else the space's."""
    cpus = opts.cpus_per_trial or space.tune.cpus_per_trial
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else space.tune.gpus_per_trial
    return cpus, gpus


def check_resources(space: SearchSpace, opts: SearchOptions) -> None:
    """Refuse what no node of the cluster can hold (a trial or task runs on one node), which
    Ray would wait for forever. An autoscaling cluster may add such a node: not checked
    there (the cluster launcher leaves its config in the home folder; Tune tests the same)."""
    import ray

    if Path("~/ray_bootstrap_config.yaml").expanduser().exists():
        return
    want = dict(zip(("CPU", "GPU"), trial_resources(space, opts)))
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(all(node.get(k, 0) >= v for k, v in want.items()) for node in nodes):
        return
    short = [k for k, v in want.items() if all(node.get(k, 0) < v for node in nodes)]
    short = short or list(want)  # each fits somewhere, but not both on one node
    asked = ", ".join(f"{resource_source(space, opts, k)} {want[k]:g}" for k in short)
    total = ray.cluster_resources()
    has = ", ".join(f"{total.get(k, 0):g} {k}s" for k in short)
    largest = max(nodes, key=lambda r: [r.get(k, 0) for k in short], default={})
    raise HandReIDError(
        f"{asked}: the cluster has {has} (largest node: {largest.get('CPU', 0):g} CPUs, "
        f"{largest.get('GPU', 0):g} GPUs); a trial must fit on one node"
    )


def resource_source(space: SearchSpace, opts: SearchOptions, kind: str) -> str:
    flag = opts.cpus_per_trial if kind == "CPU" else opts.gpus_per_trial
    if flag is not None:
        return f"--{kind.lower()}s-per-trial"
    return f"{space.source}: tune.resources.{kind.lower()}s"


def study_storage(run_dir: Path):
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{(run_dir / STUDY_FILE).resolve()}")


def study_name(opts: SearchOptions) -> str:
    return f"handreid-{opts.name}"


def use_study_file(opts: SearchOptions) -> None:
    """Bind the search's study to ``<run dir>/study.db`` in this process (a restored searcher
    opens it, whatever path it was pickled with); with URI storage Tune also uploads a copy
    of it with each save of its experiment state (see search.optuna_search)."""
    from search import optuna_search

    path = local_run_dir(opts) / STUDY_FILE
    optuna_search.use_study_file(study_name(opts), path, snapshot=is_uri(opts.storage))


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


def experiment_path(opts: SearchOptions) -> str:
    """Tune's experiment folder: the same as the run directory unless storage is a URI."""
    if is_uri(opts.storage):
        return opts.storage.rstrip("/") + "/" + opts.name
    return str(local_run_dir(opts))


def run_search(space: SearchSpace, opts: SearchOptions) -> pd.DataFrame:
    """Run (or resume) the search, then write trials.csv and best/. Returns the trial table.
    Raises ``SearchStopped`` when a signal ended it early (nothing is written then)."""
    from ray import tune

    opts = pin_run_dir(opts)
    path = experiment_path(opts)
    if opts.resume:
        if is_uri(opts.storage):
            fetch_run_files(opts, path)
        check_resume(space, opts)
    exists = tune.Tuner.can_restore(path)
    if opts.resume and not exists:
        raise HandReIDError(f"nothing to resume at {path}")
    if not opts.resume and exists:
        raise HandReIDError(f"a search already exists at {path}: pass --resume or a new --name")
    use_study_file(opts)
    init_ray(opts.address, num_gpus=None)
    check_resources(space, opts)
    run_dir = local_run_dir(opts)
    if not (opts.resume and (run_dir / "search.json").is_file()):
        write_search_meta(space, opts)
    from search.confirm import run_confirmation

    with stop_signals() as stop:
        if opts.resume:
            tuner = restore_tuner(space, opts, path)
        else:
            prepare_data(space)
            tuner = build_tuner(space, opts)
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:  # a second signal cut Tune's last state snapshot short
            grid = None
        if grid is None or not search_finished(path, read_search_meta(run_dir)["num_samples"]):
            raise SearchStopped(stop.signum, path)
        confirmed = run_confirmation(space, opts, grid, stop)  # None: confirmation off
    if is_uri(opts.storage):
        set_aside_stored_orphans(path, grid)
        mirror_results(path, run_dir)
    return finish(space, opts, grid, confirmed)


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


# ------------------------------------------------------------------ stop and resume


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


def prepare_data(space: SearchSpace) -> None:
    """Generate synthetic data, and the tiny CLIPs pretrained here when the space uses them
    (``model.pretrained: tiny-synth``), once in the driver, with progress, so trials do not
    start by racing for them."""
    from handreid.data.build import resolve_root
    from handreid.models.pretrain_tiny import prepare

    resolve_root(space.base.data)
    prepare(space.trial_config({}).model.pretrained, backbone_choices(space))


def backbone_choices(space: SearchSpace) -> list[str]:
    """Every backbone a trial of the space may train."""
    for param in space.params:
        if param.key == "model.backbone":
            return list(dict.fromkeys(c for branch in param.branches for c in branch.choices))
    return [space.trial_config({}).model.backbone]


# ------------------------------------------------------------------ after the search


def trial_rows(space: SearchSpace, grid) -> list[dict[str, Any]]:
    """One row per search trial (its own configuration: ``config_id`` is its trial id)."""
    rows = []
    for result in grid:
        row = trial_row(space, result, result.config or {})
        rows.append({**row, "role": "search", "config_id": row["trial_id"]})
    return rows


def search_table(space: SearchSpace, grid) -> pd.DataFrame:
    """The search's trials, best first."""
    table = pd.DataFrame(trial_rows(space, grid))
    metric = f"best_{space.tune.metric}"
    return table.sort_values(metric, ascending=space.tune.mode == "min", na_position="last")


def trial_row(space: SearchSpace, result, params: dict[str, Any]) -> dict[str, Any]:
    """A Tune result as a trials.csv row; ``params``: the trial's parameters (Optuna names)."""
    from search.optuna_search import ending

    metrics = result.metrics or {}
    kind, reason = ending(metrics, result.error is not None)
    if result.error is not None:
        reason = f"error: {str(result.error).strip().splitlines()[-1][:200]}"
    history = result.metrics_dataframe
    seconds = (
        float(history["epoch_seconds"].sum())
        if history is not None and ("epoch_seconds" in history)
        else 0.0
    )
    columns = {config_key(k): v for k, v in params.items()}
    columns.pop("model.backbone", None)  # the backbone column says it
    columns.pop("train.seed", None)  # the train_seed column says it
    cfg = space.trial_config(params)
    return {
        "trial_id": metrics.get("trial_id") or Path(result.path).name,
        "backbone": cfg.model.backbone,
        **columns,
        "status": kind,
        "pruned_at_epoch": metrics.get("epoch") if kind == "pruned" else None,
        "fail_reason": reason,
        "epochs": metrics.get("epoch", 0),
        f"best_{space.tune.metric}": metrics.get("objective"),
        "best_epoch": metrics.get("best_epoch"),
        "train_seconds": round(seconds, 2),
        "path": result.path,
        "train_seed": cfg.train.seed,
    }


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


TEST_COLUMNS = (
    "test_rank1",
    "test_rank5",
    "test_rank10",
    "test_mAP",
    "test_rank1_std",
    "test_rank5_std",
    "test_rank10_std",
    "test_mAP_std",
    "test_error",
)


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


def finish(space: SearchSpace, opts: SearchOptions, grid, confirmed=None) -> pd.DataFrame:
    """The wrap-up. ``confirmed``: the confirmation runs (``search.confirm``), or None when
    confirmation is off: then the top-k trials per backbone are scored, as before it."""
    from search import confirm

    run_dir = local_run_dir(opts)
    set_aside_orphans(run_dir, grid)
    table = search_table(space, grid)
    results = {Path(r.path).name: r for r in grid}
    keep = set(top_k(table, max(space.tune.top_k, space.tune.confirm.top_k))["trial_id"])
    if confirmed is None:
        confirm.drop_summary(run_dir)
        tests = evaluate_top_k(space, opts, table, results, run_dir)
    else:
        table = pd.concat([table, confirm.run_table(space, confirmed)], ignore_index=True)
        tests = confirm.wrap_up(space, opts, table, results, confirmed, run_dir)
        keep |= confirm.kept_states(table, confirmed)
    drop_scratch(opts, keep)
    for col in TEST_COLUMNS:
        table[col] = [tests.get(t, {}).get(col.removeprefix("test_")) for t in table["trial_id"]]
    fail_lost_trials(run_dir)  # none left after a resume, unless a tell failed
    write_table(table, run_dir / "trials.csv")
    write_report(run_dir)
    return table


def write_table(table: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)


def evaluate_top_k(space, opts, table, results, run_dir: Path) -> dict[str, dict]:
    """Score the top-k trials per backbone on the test protocol, in Ray tasks."""
    import ray

    picks = top_k(table, space.tune.top_k)
    cpus, gpus = trial_resources(space, opts)
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(evaluate_checkpoint)
    jobs = {}
    for trial_id, path in zip(picks["trial_id"], picks["path"]):
        result = results[Path(path).name]
        if result.checkpoint is None:
            continue
        cfg = space.trial_config(result.config, {"train.cpu": gpus == 0})
        ref = task.remote(cfg, result.checkpoint, scratch_root(opts))
        jobs[trial_id] = (cfg, result.checkpoint, ref)
    out: dict[str, dict] = {}
    best_seen: set[str] = set()
    for trial_id in picks["trial_id"]:
        if trial_id not in jobs:
            continue
        cfg, checkpoint, ref = jobs[trial_id]
        out[trial_id] = test_metrics(ref, trial_id)
        if cfg.model.backbone not in best_seen:  # the first pick per backbone is its best
            best_seen.add(cfg.model.backbone)
            folder = run_dir / "best" / cfg.model.backbone
            doc = {"trial_id": trial_id, "confirmed": False, **out[trial_id]}
            save_best(folder, cfg, checkpoint, scratch_root(opts), doc)
    return out


def top_k(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` trials per backbone the wrap-up scores, best first: complete trials by the
    objective, then pruned ones (a trial ASHA stopped was judged worse at its rung, however
    high its early value). ``table`` is sorted best first; confirmation runs are not trials
    of the search and are left out."""
    if "role" in table:
        table = table[table["role"] == "search"]
    usable = table[table["status"].isin(["complete", "pruned"])]
    usable = usable.sort_values("status", key=lambda s: s != "complete", kind="stable")
    return usable.groupby("backbone", sort=False).head(k)


def test_metrics(ref, trial_id: str) -> dict:
    """One top-k evaluation's metrics; a failed one is recorded as its error (one line) and
    the wrap-up goes on with the other trials, trials.csv and the report."""
    import ray

    try:
        return ray.get(ref)
    except Exception as err:  # a RayTaskError wraps whatever the task raised
        cause = getattr(err, "cause", None) or err
        words = (str(cause).strip().splitlines() or [""])[0]
        line = f"{type(cause).__name__}: {words}"
        log.warning("test evaluation of trial %s failed (%s); going on", trial_id, line)
        return {"error": line}


def scratch_keeper(space: SearchSpace, opts: SearchOptions) -> list:
    """The callback that frees ended trials' state (with a storage path; see search.scratch)."""
    from search.scratch import ScratchKeeper

    root = scratch_root(opts)
    keep = max(space.tune.top_k, space.tune.confirm.top_k)  # scored, or confirmed later
    return [] if root is None else [ScratchKeeper(root, keep, space.tune.mode)]


def scratch_root(opts: SearchOptions) -> str | None:
    return None if is_uri(opts.storage) else str(local_run_dir(opts) / SCRATCH)


def drop_scratch(opts: SearchOptions, keep: set[str]) -> None:
    """After the wrap-up, only the top-k trials (and the runs of confirmed configurations)
    keep their best weights in scratch/."""
    root = scratch_root(opts)
    if root is None or not Path(root).is_dir():
        return
    for folder in Path(root).iterdir():
        if folder.is_dir() and folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def evaluate_checkpoint(cfg, checkpoint, scratch: str | None) -> dict:
    """The test protocol on a trial's best weights (rebuilt over the pretrained source)."""
    from handreid.train.trainer import evaluate_test

    with tempfile.TemporaryDirectory() as tmp:
        fetch_best(checkpoint, scratch, Path(tmp) / "best.pt")
        result = evaluate_test(cfg, tmp)
    return {k: v for k, v in result.items()}


def save_best(folder: Path, cfg, checkpoint, scratch, doc: dict) -> None:
    """``best/<backbone>/``: the resolved config, the best weights, the history and split of
    the trial, and ``doc`` as test_metrics.json."""
    folder.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, folder / "config.yaml")
    try:
        fetch_best(checkpoint, scratch, folder / "best.pt")
    except HandReIDError as err:  # e.g. freed by an earlier wrap-up: the rest still counts
        log.warning("%s/best.pt not written: %s", folder, err)
    with checkpoint.as_directory() as src:
        for name in ("history.csv", "split.json"):
            if (Path(src) / name).is_file():
                shutil.copyfile(Path(src) / name, folder / name)
    tmp = folder / "test_metrics.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=float))
    tmp.replace(folder / "test_metrics.json")


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


def write_report(run_dir: Path) -> None:
    try:
        from analysis.report import write_all
    except ImportError:
        return
    try:
        write_all([run_dir], run_dir / "report")
    except HandReIDError as err:
        log.warning("report not written: %s", err)
