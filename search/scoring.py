"""Test scoring: the only time test data is read, in Ray tasks, and ``best/<backbone>/``.

Without confirmation the top-k trials per backbone are scored (``evaluate_top_k``); with
it, the winners' scoring runs (``search.confirm.score_seeds``), through the same
``evaluate_checkpoint`` and ``save_best``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from handreid.config import dump_config
from handreid.errors import HandReIDError
from search.assets import assets_location, attached
from search.launch import trial_resources
from search.rundir import scratch_root
from search.table import top_k
from search.trainable import fetch_best

log = logging.getLogger(__name__)


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
        ref = task.remote(cfg, result.checkpoint, scratch_root(opts), assets_location(opts))
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


def evaluate_checkpoint(cfg, checkpoint, scratch: str | None, assets: str | None = None) -> dict:
    """The test protocol on a trial's best weights (rebuilt over the pretrained source, read
    from the run's ``assets`` as the trials read it)."""
    from handreid.train.trainer import evaluate_test

    with tempfile.TemporaryDirectory() as tmp, attached(assets, cfg):
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
