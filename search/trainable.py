"""The Ray Tune function trainable: flat trial parameters -> config -> ``handreid.train``.

Each epoch's metrics go to ``tune.report`` with a checkpoint holding the resumable state,
so a trial retried on another node continues from its last epoch. The objective is the
best-so-far value of the space's metric (what the best checkpoint scores).
"""

from __future__ import annotations

import csv
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from search.space import SearchSpace

CHECKPOINT_FILES = ("checkpoint.pt", "best.pt", "history.csv", "config.yaml", "split.json")


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


class BestSoFar:
    def __init__(self, mode: str):
        self.sign = 1.0 if mode == "max" else -1.0
        self.value: float | None = None

    def update(self, value: Any) -> float:
        if isinstance(value, (int, float)) and math.isfinite(value):
            if self.value is None or self.sign * value > self.sign * self.value:
                self.value = float(value)
        return self.value if self.value is not None else float("nan")


def restore_into(out: Path, checkpoint) -> None:
    """Make ``out`` hold exactly Tune's last checkpoint (or nothing): Tune is the authority
    on which epochs were reported, so newer local state from a killed attempt is dropped."""
    for name in CHECKPOINT_FILES:
        (out / name).unlink(missing_ok=True)
    if checkpoint is None:
        return
    with checkpoint.as_directory() as folder:
        for name in CHECKPOINT_FILES:
            if (Path(folder) / name).is_file():
                shutil.copyfile(Path(folder) / name, out / name)


def run_trial(params: dict[str, Any], *, space: SearchSpace, extra: dict[str, Any]) -> None:
    import ray
    from ray import tune

    from handreid.train.trainer import train

    cfg = space.trial_config(params, extra)
    ctx = tune.get_context()
    out = scratch_dir(ctx.get_experiment_name(), ctx.get_trial_id())
    restore_into(out, tune.get_checkpoint())
    best = BestSoFar(space.tune.mode)
    history = out / "history.csv"
    if history.is_file():  # resumed: the best so far includes the epochs already run
        with history.open() as fh:
            for row in csv.DictReader(fh):
                best.update(float(row.get(space.tune.metric) or "nan"))

    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any], path: Path | None) -> None:
        row = scalar_metrics(metrics)
        row["objective"] = best.update(metrics.get(space.tune.metric))
        row["backbone"] = cfg.model.backbone
        row["node_id"] = node_id  # where this epoch ran (retries move trials between nodes)
        if path is None:
            tune.report(row)
            return
        with tempfile.TemporaryDirectory() as tmp:
            for name in CHECKPOINT_FILES:
                if (out / name).is_file():
                    shutil.copyfile(out / name, Path(tmp) / name)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(tmp))

    train(cfg, out, report=report, evaluate_on_test=False)
    shutil.rmtree(out, ignore_errors=True)  # everything worth keeping is in Tune's checkpoints


def scratch_dir(experiment: str, trial_id: str) -> Path:
    """Node-local working folder of a trial, outside the folder Tune syncs: the trainer's
    atomic writes must not race Tune's uploads, and checkpoints go to storage only once."""
    out = Path(tempfile.gettempdir()) / "handreid-trials" / experiment / trial_id
    out.mkdir(parents=True, exist_ok=True)
    return out
