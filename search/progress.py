"""What a search prints while it runs: a progress bar over trials (on a terminal) and one line
per finished trial. Ray's own live trial tables are one flag away (``--verbose``)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

from ray.tune import Callback
from tqdm import tqdm

from search.optuna_search import ending


def trial_line(trial_id: str, result: dict, metric: str, label: str | None = None) -> str:
    """One finished trial in words: how it ended, its backbone, its best value and cost.
    ``label`` names it instead of ``trial <id>`` (a confirmation run: its configuration and
    seed)."""
    kind, reason = ending(result, False)
    epoch = int(result.get("epoch", 0))
    if kind == "pruned":
        kind = f"pruned at epoch {epoch}"
    elif kind == "complete":
        kind = f"complete, {epoch} epochs"
    best = result.get("objective")
    value = f"{best:.2f}" if isinstance(best, (int, float)) and math.isfinite(best) else "-"
    seconds = result.get("time_total_s")
    cost = f", {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
    label = label or f"trial {trial_id}"
    line = f"{label}  {result.get('backbone', '?'):<10} best {metric} {value:>6}  {kind}"
    return line + cost + (f" [{reason}]" if reason else "")


class TrialSummary(Callback):
    def __init__(
        self,
        metric: str,
        total: int,
        bar: bool | None = None,
        label: Callable[[Any], str] | None = None,
        desc: str = "trials",
    ):
        self.metric = metric
        self.total = total
        self.label = label or (lambda trial: f"trial {trial.trial_id}")
        self.desc = desc
        self.bar_wanted = sys.stderr.isatty() if bar is None else bar
        self.bar: tqdm | None = None

    def setup(self, **info) -> None:
        if self.bar_wanted and self.bar is None:
            self.bar = tqdm(total=self.total, desc=self.desc, unit="trial", dynamic_ncols=True)

    def _say(self, line: str) -> None:
        (self.bar.write if self.bar is not None else print)(line)

    def _count(self, trials, trial) -> None:
        """Ended trials, those of a resumed search's earlier run too; Tune calls back before
        it marks ``trial`` itself as ended."""
        if self.bar is not None:
            ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
            self.bar.n = len(ended | {trial.trial_id})
            self.bar.refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        self._say(trial_line(trial.trial_id, result, self.metric, self.label(trial)))
        self._count(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._say(f"{self.label(trial)}  failed with an error (see its folder's error.txt)")
        self._count(trials, trial)

    def on_experiment_end(self, trials, **info):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
