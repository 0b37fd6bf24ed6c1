"""The Ray Tune function trainable: flat trial parameters -> config -> ``handreid.train``.

Each epoch's metrics go to ``tune.report`` with a checkpoint, so a trial retried on
another node continues from its last epoch. The objective is the best-so-far value of the
space's metric (what the best checkpoint scores).

A checkpoint goes with each epoch that writes the resumable state: every
``train.checkpoint_every`` epochs, the last, and every rung of the space's scheduler (where
ASHA may stop the trial, so a stopped trial's last checkpoint names its best epoch); other
epochs are reported without one. The trainer writes ``checkpoint.pt`` into the trial's
state folder; with a storage path (local or NFS), that folder lives in the run directory
and Tune's checkpoint is a small manifest naming the epoch's state file (kept under
``states/`` by a hard link, so no byte is written twice, as is a ``best.pt`` written on
its own). With URI storage the state folder is node-local and the state files themselves
go into Tune's checkpoint (one upload).
"""

from __future__ import annotations

import csv
import getpass
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from handreid.config import Config, apply_overrides
from handreid.errors import HandReIDError
from handreid.train.checkpoint import atomic_link, atomic_save, checkpoint_due
from search.assets import attached
from search.objective import BestSoFar, judged_from
from search.space import SearchSpace

STATE_FILES = ("checkpoint.pt", "best.pt")
SMALL_FILES = ("history.csv", "config.yaml", "split.json")
MANIFEST = "state.json"
STATES = "states"


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


def state_dir(scratch_root: str | None, experiment: str, trial_id: str) -> Path:
    """The trial's working folder: ``<run dir>/scratch/<trial>`` with a storage path (shared
    by every node that sees the storage), else node-local, per user and per search."""
    if scratch_root:
        root = Path(scratch_root)
    else:
        root = Path(tempfile.gettempdir()) / f"handreid-{getpass.getuser()}" / experiment
    out = root / trial_id
    out.mkdir(parents=True, exist_ok=True)
    return out


def state_at_rungs(cfg: Config, space: SearchSpace) -> Config:
    """``cfg`` writing its resumable state at every epoch where the scheduler may stop it."""
    rungs = space.tune.milestones(space.max_epochs)
    epochs = sorted(set(cfg.train.checkpoint_epochs) | set(rungs))
    return apply_overrides(cfg, {"train.checkpoint_epochs": epochs})


def epoch_file(out: Path, epoch: int) -> Path:
    return out / STATES / f"epoch_{epoch:04d}.pt"


def hand_over(out: Path, folder: Path, epoch: int, best_epoch: int, durable: bool) -> None:
    """Fill ``folder`` (what Tune stores) with epoch ``epoch``'s checkpoint."""
    for name in SMALL_FILES:
        if (out / name).is_file():
            shutil.copyfile(out / name, folder / name)
    manifest = {"trial": out.name, "epoch": epoch, "best_epoch": best_epoch, "durable": durable}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    if durable:  # keep this epoch's state under its own name; Tune gets only the manifest
        (out / STATES).mkdir(exist_ok=True)
        atomic_link(out / "checkpoint.pt", epoch_file(out, epoch))
        best = epoch_file(out, best_epoch)
        if not best.is_file() and (out / "best.pt").is_file():  # best weights on their own
            atomic_link(out / "best.pt", best)
        return
    for name in STATE_FILES:
        if (out / name).is_file():
            atomic_link(out / name, folder / name)  # no bytes: Tune uploads from the link


def drop_states(out: Path, keep: set[int], last: int = 1) -> None:
    """Delete the epoch states that no checkpoint Tune may restore still names: Tune keeps
    its ``last`` newest checkpoints (a driver restarted from a lagging snapshot restores
    an older one than the newest), and ``keep`` names the best epochs they point to."""
    paths = sorted((out / STATES).glob("epoch_*.pt"))
    recent = {int(p.stem.split("_")[1]) for p in paths[-last:]} if last > 0 else set()
    for path in paths:
        if int(path.stem.split("_")[1]) not in keep | recent:
            path.unlink(missing_ok=True)


def restore_into(out: Path, checkpoint) -> bool:
    """Make ``out`` hold exactly Tune's last checkpoint (or nothing): Tune is the authority
    on which epochs were reported, so newer local state from a killed attempt is dropped.
    Returns True when that checkpoint is the end of a trial that already finished here
    (its state was slimmed to ``best.pt``): there is nothing left to run."""
    if finished_here(out):
        return True
    for name in STATE_FILES + SMALL_FILES:
        (out / name).unlink(missing_ok=True)
    if checkpoint is None:
        shutil.rmtree(out / STATES, ignore_errors=True)
        return False
    with checkpoint.as_directory() as folder:
        folder = Path(folder)
        for name in SMALL_FILES + STATE_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, out / name)
        manifest = json.loads((folder / MANIFEST).read_text())
    if not manifest["durable"]:
        return False
    epoch, best = manifest["epoch"], manifest["best_epoch"]
    for name, wanted in (("checkpoint.pt", epoch), ("best.pt", best)):
        source = epoch_file(out, wanted)
        if not source.is_file():
            raise HandReIDError(f"checkpoint state of epoch {wanted} is missing: {source}")
        atomic_link(source, out / name)
    for path in (out / STATES).glob("epoch_*.pt"):  # newer than Tune's record: not reported
        if int(path.stem.split("_")[1]) > epoch:
            path.unlink()
    return False


FINISHED = "finished"


def finished_here(out: Path) -> bool:
    """A trial whose run ended (completed, or stopped by the scheduler) and whose state was
    freed: a driver killed before it recorded the end restarts such a trial from its last
    checkpoint, and there is nothing left to run."""
    return (out / FINISHED).is_file()


def slim_best(out: Path) -> None:
    """After a trial: keep only what evaluation needs (the best epoch's trainable tensors)."""
    best = out / "best.pt"
    if best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=False)
        keep = ("model", "fingerprint", "losses", "progress")
        atomic_save({k: state[k] for k in keep if k in state}, best)
    (out / FINISHED).write_text("")
    (out / "checkpoint.pt").unlink(missing_ok=True)
    shutil.rmtree(out / STATES, ignore_errors=True)


def fetch_best(checkpoint, scratch_root: str | None, dest: Path) -> None:
    """Put the ``best.pt`` behind a trial's Tune checkpoint at ``dest`` (a hard link where
    it lies on the same filesystem): the weights its test evaluation and ``best/`` use."""
    with checkpoint.as_directory() as folder:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
        if not manifest["durable"]:
            shutil.copyfile(Path(folder) / "best.pt", dest)
            return
    out = Path(scratch_root or "") / manifest["trial"]
    for path in (out / "best.pt", epoch_file(out, manifest["best_epoch"])):
        if path.is_file():
            atomic_link(path, dest)
            return
    raise HandReIDError(f"no best checkpoint for {manifest['trial']} under {out}")


def reported_epoch(checkpoint) -> int:
    """The epoch of Tune's last checkpoint of a trial (0 without one)."""
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        return int(json.loads((Path(folder) / MANIFEST).read_text())["epoch"])


def _number(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else value


def history_after(out: Path, epoch: int, space: SearchSpace) -> list[dict[str, Any]]:
    """The rows of a trial's history.csv after ``epoch``, as its reports said them (with
    the best-so-far objective): what a driver that died before recording them never saw."""
    best = BestSoFar(space.tune.mode)
    rows: list[dict[str, Any]] = []
    if not (out / "history.csv").is_file():
        return rows
    with (out / "history.csv").open() as fh:
        for raw in csv.DictReader(fh):
            row = {k: _number(v) for k, v in raw.items() if v != ""}
            row["objective"] = best.update(row.get(space.tune.metric))
            if row["epoch"] > epoch:
                rows.append(row)
    return rows


def run_trial(
    params: dict[str, Any],
    *,
    space: SearchSpace,
    extra: dict[str, Any],
    scratch_root: str | None,
    state_key: str | None = None,
    assets: str | None = None,
) -> None:
    """One trial; ``assets``: where the driver put what it reads (``search.assets``). With
    ``scratch_root``, epoch states are kept as Tune keeps checkpoints: the
    ``tune.checkpoints_to_keep`` newest, and the best epoch each of them names.
    ``state_key`` names the state folder (default: the Tune trial id); the confirmation
    names it after the run (configuration and seed), so that a run Tune has to create again
    after a driver crash finds the state of the one it replaces."""
    import ray
    from ray import tune

    from handreid.train.optim import warmup_epochs
    from handreid.train.trainer import train

    cfg = state_at_rungs(space.trial_config(params, extra), space)
    judged = judged_from(  # ASHA judges the trial only after its warm-up and the share
        warmup_epochs(cfg.optim.scheduler, cfg.optim.warmup_epochs, cfg.train.epochs),
        space.tune.judge_after,
        cfg.train.epochs,
    )
    ctx = tune.get_context()
    out = state_dir(scratch_root, ctx.get_experiment_name(), state_key or ctx.get_trial_id())
    checkpoint = tune.get_checkpoint()
    if restore_into(out, checkpoint):  # ended before a driver crash: replay its end to Tune
        extra_cols = {"backbone": cfg.model.backbone, **judged}
        extra_cols["node_id"] = ray.get_runtime_context().get_node_id()
        for row in history_after(out, reported_epoch(checkpoint), space):
            tune.report({**row, **extra_cols})
        return
    best = BestSoFar(space.tune.mode)
    saved: list[int] = []  # the epochs that handed Tune a checkpoint
    bests: list[int] = []  # the best epoch each of those names
    history = out / "history.csv"
    if history.is_file():  # resumed: the best so far includes the epochs already run
        with history.open() as fh:
            for row in csv.DictReader(fh):
                best.update(float(row.get(space.tune.metric) or "nan"))
                if checkpoint_due(cfg.train, int(row["epoch"]), row["status"]):
                    saved.append(int(row["epoch"]))
                    bests.append(int(row["best_epoch"]))

    node_id = ray.get_runtime_context().get_node_id()
    durable = scratch_root is not None
    keep = space.tune.checkpoints_to_keep

    def report(metrics: dict[str, Any], path: Path | None) -> None:
        row = scalar_metrics(metrics)
        row["objective"] = best.update(metrics.get(space.tune.metric))
        row["backbone"] = cfg.model.backbone
        row["node_id"] = node_id  # where this epoch ran (retries move trials between nodes)
        row.update(judged)
        if path is None:
            tune.report(row)
            return
        epoch, best_epoch = int(metrics["epoch"]), int(metrics["best_epoch"])
        with tempfile.TemporaryDirectory() as tmp:
            hand_over(out, Path(tmp), epoch, best_epoch, durable)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(tmp))
        if durable:
            saved.append(epoch)
            bests.append(best_epoch)
            drop_states(out, set(bests[-keep:]) | set(saved[-keep:]), last=0)

    with attached(assets, cfg):  # the driver's inputs, read only; never built here
        train(cfg, out, report=report, evaluate_on_test=False, raise_oom=True)  # OOM: retried
    if durable:
        slim_best(out)
    else:  # everything worth keeping is in Tune's checkpoints
        shutil.rmtree(out, ignore_errors=True)
