"""Bounded disk: the driver frees the state of trials that have ended.

With a storage path, each trial keeps its epoch states in ``<run dir>/scratch/<trial>/``
(see :mod:`search.trainable`). A trial stopped by ASHA is killed, so it never cleans up
after itself; this callback does, in the driver. When a trial ends (pruned, complete or
failed) its resumable state goes, and only its ``best.pt`` stays, and only while the trial
is among the ``top_k`` ended trials of its backbone (the ones the wrap-up scores: complete
trials first, then pruned ones, each by objective; see ``search.table.top_k``). A trial
that leaves the top-k loses its ``best.pt`` too. Peak disk is then bounded by the trials in
flight (each: the checkpoints Tune keeps) plus ``top_k`` best checkpoints per backbone, plus
the state of trials that ended in an error (kept for ``--retry-failed``). After the
wrap-up, ``drop_scratch`` removes all but the folders it keeps.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from ray.tune import Callback

from search.optuna_search import ending
from search.rundir import SearchOptions, scratch_root
from search.space import SearchSpace
from search.trainable import FINISHED


def free_trial(folder: Path, keep_best: bool) -> None:
    """Leave the ended-trial marker (a resume must not run it again), the history (a resume
    replays its end to Tune) and, maybe, best.pt."""
    if not folder.is_dir():
        return
    (folder / FINISHED).write_text("")
    for path in folder.iterdir():
        if path.name in (FINISHED, "history.csv") or (keep_best and path.name == "best.pt"):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class ScratchKeeper(Callback):
    def __init__(self, root: str | Path, top_k: int, mode: str):
        self.root = Path(root)
        self.top_k = top_k
        self.sign = -1.0 if mode == "max" else 1.0
        # backbone -> trial id -> (0 complete / 1 pruned, signed objective): ascending = better
        self.ended: dict[str, dict[str, tuple[int, float]]] = {}

    def _ended(self, trial) -> None:
        result = trial.last_result or {}
        value = result.get("objective")
        usable = isinstance(value, (int, float)) and math.isfinite(value)
        backbone = str(result.get("backbone", "?"))
        if not usable:
            free_trial(self.root / trial.trial_id, keep_best=False)
            return
        board = self.ended.setdefault(backbone, {})
        complete = ending(result, False)[0] == "complete"
        board[trial.trial_id] = (0 if complete else 1, self.sign * float(value))
        ranked = sorted(board, key=board.__getitem__)
        for rank, trial_id in enumerate(ranked):
            free_trial(self.root / trial_id, keep_best=rank < self.top_k)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial)

    # a trial that ended in an error keeps its state: `--retry-failed` resumes it from there
    # (the wrap-up's clean-up removes it at the end of the search)


def scratch_keeper(space: SearchSpace, opts: SearchOptions) -> list:
    """The callback that frees ended trials' state (with a storage path), for the Tuner."""
    root = scratch_root(opts)
    keep = max(space.tune.top_k, space.tune.confirm.top_k)  # scored, or confirmed later
    return [] if root is None else [ScratchKeeper(root, keep, space.tune.mode)]


def drop_scratch(opts: SearchOptions, keep: set[str]) -> None:
    """After the wrap-up, only the top-k trials (and the runs of confirmed configurations)
    keep their best weights in scratch/."""
    root = scratch_root(opts)
    if root is None or not Path(root).is_dir():
        return
    for folder in Path(root).iterdir():
        if folder.is_dir() and folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)
