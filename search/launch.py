"""Starting a search: Ray, the trial's resources, the data, and the Tuner.

``build_tuner`` puts together the trainable (``search.trainable``), the searcher and the
scheduler (``search.strategy``, shared with the benchmarks), the concurrency limit and the
callbacks (progress, scratch). What the trials read is prepared before, once, by
``search.assets``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from handreid.errors import HandReIDError
from search import resources
from search.assets import assets_location
from search.rundir import (
    SCRATCH,
    STUDY_FILE,
    SearchOptions,
    is_uri,
    local_run_dir,
    study_name,
    study_storage,
)
from search.space import SearchSpace


def init_ray(address: str | None, num_gpus: float | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=ray_log_level())
    else:  # a local instance inside this command: no dashboard, no network needed, and no
        # joining a cluster that another `ray start` or search left running (address=None would).
        # Token auth stays Ray's default for it; only Ray's note saying so at every start is
        # dropped (setting RAY_AUTH_MODE here instead would leave Ray's cached config behind)
        logging.getLogger(RAY_AUTH_LOGGER).addFilter(_drop_token_auth_note)
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=ray_log_level(),
        )


RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _drop_token_auth_note(record: logging.LogRecord) -> bool:
    """Ray's "Token authentication is enabled for this Ray cluster" at each local start."""
    return not record.getMessage().startswith("Token authentication is enabled for this")


def ray_log_level() -> int:
    """Ray's own log level: INFO, or what the command line asked (`handreid-search` without
    --verbose: WARNING, so no "Started a local Ray instance")."""
    return getattr(logging, os.environ.get("HANDREID_RAY_LOG_LEVEL", "INFO"), logging.INFO)


def build_tuner(space: SearchSpace, opts: SearchOptions):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search.progress import TrialSummary
    from search.scratch import scratch_keeper
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
    trainable = tune.with_parameters(  # assets: what the driver prepared (search.assets)
        fn or run_trial,
        space=space,
        extra=extra,
        scratch_root=scratch,
        assets=assets_location(opts),
    )
    if resources.asked(space, opts) == resources.AUTO:  # a share by the trial's memory
        return tune.with_resources(trainable, auto_shares(space, opts, cpus, extra))
    return tune.with_resources(trainable, {"cpu": cpus, "gpu": gpus})


def trial_resources(space: SearchSpace, opts: SearchOptions) -> tuple[float, float]:
    """CPUs and GPUs of one trial, and of one top-k evaluation task: the flags, else the space's."""
    cpus = opts.cpus_per_trial or space.tune.cpus_per_trial
    gpus = resources.asked(space, opts)
    if gpus == resources.AUTO:  # the largest share any trial of the space gets
        gpus = auto_shares(space, opts, cpus).largest
    return cpus, gpus


def auto_shares(space: SearchSpace, opts: SearchOptions, cpus: float, extra=None):
    """``--gpus-per-trial auto``: each trial's GPU share from its memory estimate."""
    gpu_bytes = resources.gpu_memory(opts.gpu_memory)
    return resources.gpu_shares(space, cpus, gpu_bytes, extra)


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


def use_study_file(opts: SearchOptions) -> None:
    """Bind the search's study to ``<run dir>/study.db`` in this process (a restored searcher
    opens it, whatever path it was pickled with); with URI storage Tune also uploads a copy
    of it with each save of its experiment state (see search.optuna_search)."""
    from search import optuna_search

    path = local_run_dir(opts) / STUDY_FILE
    optuna_search.use_study_file(study_name(opts), path, snapshot=is_uri(opts.storage))
