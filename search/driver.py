"""The search driver: Ray Tune Tuner + Optuna TPE + ASHA, resume, and the post-search steps.

After the search: ``trials.csv`` (every trial), the Optuna study (``study.db``), the top-k
trials per backbone scored on the test protocol (the only time test data is read), and
``best/<backbone>/`` with the resolved config and checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from handreid.config import dump_config
from handreid.errors import HandReIDError
from search.space import SearchSpace, config_key
from search.trainable import fetch_best

log = logging.getLogger(__name__)

STUDY_FILE = "study.db"
SCRATCH = "scratch"  # trials' state folders, with a storage path (see search.trainable)


@dataclass
class SearchOptions:
    name: str
    storage: str  # local folder or a pyarrow filesystem URI
    address: str | None = None
    resume: bool = False
    num_samples: int | None = None
    max_concurrent: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    stage1_cache: bool = True
    verbose: int = 1


def is_uri(storage: str) -> bool:
    return "://" in storage


def local_run_dir(opts: SearchOptions) -> Path:
    """Where the summary files go: the experiment folder, or runs/<name> for URI storage."""
    if is_uri(opts.storage):
        return Path("runs") / opts.name
    return Path(opts.storage).resolve() / opts.name


def init_ray(address: str | None, num_gpus: float | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:  # a local instance inside this command: no dashboard, no network needed
        ray.init(
            num_cpus=os.cpu_count(), num_gpus=num_gpus, include_dashboard=False, log_to_driver=False
        )


def build_tuner(space: SearchSpace, opts: SearchOptions):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from search.optuna_search import HandReIDOptunaSearch
    from search.progress import TrialSummary

    t = space.tune
    run_dir = local_run_dir(opts)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainable = make_trainable(space, opts, run_dir)
    searcher = HandReIDOptunaSearch(
        space=space.define_by_run,
        metric="objective",
        mode=t.mode,
        points_to_evaluate=space.optuna_points(),
        sampler=make_sampler(t.seed, t.n_startup_trials),
        study_name=f"handreid-{opts.name}",
        storage=study_storage(run_dir),
    )
    scheduler = ASHAScheduler(
        time_attr="epoch",
        max_t=space.max_epochs,
        grace_period=t.grace_period,
        reduction_factor=t.reduction_factor,
    )
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
    )
    run_config = tune.RunConfig(
        name=opts.name,
        storage_path=opts.storage if is_uri(opts.storage) else str(Path(opts.storage).resolve()),
        failure_config=tune.FailureConfig(max_failures=t.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=t.checkpoints_to_keep),
        callbacks=[TrialSummary(t.metric)],
        verbose=opts.verbose,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def make_trainable(space: SearchSpace, opts: SearchOptions, run_dir: Path):
    from ray import tune

    from search.trainable import run_trial

    extra: dict[str, Any] = {}
    if opts.stage1_cache and not is_uri(opts.storage):
        extra["train.stage1_cache"] = str(run_dir / "stage1_cache")  # shared by every trial
    elif not opts.stage1_cache:
        extra["train.stage1_reuse"] = False
    cpus = opts.cpus_per_trial or space.tune.cpus_per_trial
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else space.tune.gpus_per_trial
    if gpus == 0:
        extra["train.cpu"] = True
    scratch = None if is_uri(opts.storage) else str(run_dir / SCRATCH)
    trainable = tune.with_parameters(run_trial, space=space, extra=extra, scratch_root=scratch)
    return tune.with_resources(trainable, {"cpu": cpus, "gpu": gpus})


def make_sampler(seed: int, n_startup_trials: int):
    import optuna

    # group=True: TPE models each conditional sub-space (e.g. per backbone) on its own
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, n_startup_trials=n_startup_trials
    )


def study_storage(run_dir: Path):
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{(run_dir / STUDY_FILE).resolve()}")


def experiment_path(opts: SearchOptions) -> str:
    """Tune's experiment folder: the same as the run directory unless storage is a URI."""
    if is_uri(opts.storage):
        return opts.storage.rstrip("/") + "/" + opts.name
    return str(local_run_dir(opts))


def run_search(space: SearchSpace, opts: SearchOptions) -> pd.DataFrame:
    """Run (or resume) the search, then write trials.csv and best/. Returns the trial table."""
    from ray import tune

    init_ray(opts.address, num_gpus=None)
    path = experiment_path(opts)
    exists = tune.Tuner.can_restore(path)
    if opts.resume and not exists:
        raise HandReIDError(f"nothing to resume at {path}")
    if not opts.resume and exists:
        raise HandReIDError(f"a search already exists at {path}: pass --resume or a new --name")
    write_search_meta(space, opts)
    if opts.resume:
        run_dir = local_run_dir(opts)
        tuner = tune.Tuner.restore(
            path,
            trainable=make_trainable(space, opts, run_dir),
            resume_unfinished=True,
            resume_errored=True,
        )
    else:
        prepare_data(space)
        tuner = build_tuner(space, opts)
    grid = tuner.fit()
    if is_uri(opts.storage):
        mirror_results(path, local_run_dir(opts))
    return finish(space, opts, grid)


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


def write_search_meta(space: SearchSpace, opts: SearchOptions) -> None:
    """What the analysis needs to read the run without Ray or the space file."""
    run_dir = local_run_dir(opts)
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": opts.name,
        "space": space.source,
        "metric": space.tune.metric,
        "mode": space.tune.mode,
        "num_samples": opts.num_samples or space.tune.num_samples,
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
    }
    tmp = run_dir / "search.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(run_dir / "search.json")


def prepare_data(space: SearchSpace) -> None:
    """Generate synthetic data once in the driver so trials do not start by racing for it."""
    from handreid.data.build import resolve_root

    resolve_root(space.base.data)


# ------------------------------------------------------------------ after the search


def trial_rows(space: SearchSpace, grid) -> list[dict[str, Any]]:
    from search.optuna_search import ending

    rows = []
    for result in grid:
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
        params = {config_key(k): v for k, v in (result.config or {}).items()}
        params.pop("model.backbone", None)  # the backbone column says it
        cfg = space.trial_config(result.config or {})
        rows.append(
            {
                "trial_id": metrics.get("trial_id") or Path(result.path).name,
                "backbone": cfg.model.backbone,
                **params,
                "status": kind,
                "pruned_at_epoch": metrics.get("epoch") if kind == "pruned" else None,
                "fail_reason": reason,
                "epochs": metrics.get("epoch", 0),
                f"best_{space.tune.metric}": metrics.get("objective"),
                "best_epoch": metrics.get("best_epoch"),
                "train_seconds": round(seconds, 2),
                "path": result.path,
            }
        )
    return rows


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


def finish(space: SearchSpace, opts: SearchOptions, grid) -> pd.DataFrame:
    run_dir = local_run_dir(opts)
    set_aside_orphans(run_dir, grid)
    table = pd.DataFrame(trial_rows(space, grid))
    metric = f"best_{space.tune.metric}"
    table = table.sort_values(metric, ascending=space.tune.mode == "min", na_position="last")
    results = {Path(r.path).name: r for r in grid}
    tests = evaluate_top_k(space, opts, table, results, run_dir)
    for col in (
        "test_rank1",
        "test_rank5",
        "test_rank10",
        "test_mAP",
        "test_rank1_std",
        "test_rank5_std",
        "test_rank10_std",
        "test_mAP_std",
    ):
        table[col] = [tests.get(t, {}).get(col.removeprefix("test_")) for t in table["trial_id"]]
    fail_zombies(run_dir)
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

    k = space.tune.top_k
    usable = table[table["status"].isin(["complete", "pruned"])]
    picks = usable.groupby("backbone", sort=False).head(k)
    gpus = opts.gpus_per_trial if opts.gpus_per_trial is not None else space.tune.gpus_per_trial
    cpus = opts.cpus_per_trial or space.tune.cpus_per_trial
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
        out[trial_id] = ray.get(ref)
        if cfg.model.backbone not in best_seen:  # the first pick per backbone is its best
            best_seen.add(cfg.model.backbone)
            folder = run_dir / "best" / cfg.model.backbone
            save_best(folder, cfg, checkpoint, scratch_root(opts), out[trial_id], trial_id)
    drop_scratch(opts, keep=set(picks["trial_id"]))
    return out


def scratch_root(opts: SearchOptions) -> str | None:
    return None if is_uri(opts.storage) else str(local_run_dir(opts) / SCRATCH)


def drop_scratch(opts: SearchOptions, keep: set[str]) -> None:
    """After the wrap-up, only the top-k trials keep their best weights in scratch/."""
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


def save_best(folder: Path, cfg, checkpoint, scratch, test: dict, trial_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, folder / "config.yaml")
    fetch_best(checkpoint, scratch, folder / "best.pt")
    with checkpoint.as_directory() as src:
        for name in ("history.csv", "split.json"):
            if (Path(src) / name).is_file():
                shutil.copyfile(Path(src) / name, folder / name)
    (folder / "test_metrics.json").write_text(
        json.dumps({"trial_id": trial_id, **test}, indent=2, default=float)
    )


def fail_zombies(run_dir: Path) -> None:
    """Trials left RUNNING in the study by a killed driver are marked FAIL (resume re-runs them)."""
    import optuna

    storage = study_storage(run_dir)
    for summary in optuna.get_all_study_summaries(storage):
        for trial in storage.get_all_trials(summary._study_id):
            if trial.state == optuna.trial.TrialState.RUNNING:
                storage.set_trial_user_attr(trial._trial_id, "fail_reason", "driver lost")
                storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)


def write_report(run_dir: Path) -> None:
    try:
        from analysis.report import write_all
    except ImportError:
        return
    try:
        write_all([run_dir], run_dir / "report")
    except HandReIDError as err:
        log.warning("report not written: %s", err)
