"""What a trial reports to the searcher and the scheduler: the best-so-far objective and
the epochs before which no rung judges it.

Pure Python (no Ray, Optuna or torch): the trainable imports it in every worker, and a
benchmark that drives the strategy without training reports the same values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class BestSoFar:
    """The best finite value seen so far in ``mode`` ("max" or "min"); NaN before one."""

    def __init__(self, mode: str):
        self.sign = 1.0 if mode == "max" else -1.0
        self.value: float | None = None

    def update(self, value: Any) -> float:
        if isinstance(value, (int, float)) and math.isfinite(value):
            if self.value is None or self.sign * value > self.sign * self.value:
                self.value = float(value)
        return self.value if self.value is not None else float("nan")


def best_so_far(values: Iterable[Any], mode: str) -> list[float]:
    """The objective a trial reports after each epoch: the best metric value up to it (what
    its best checkpoint scores), NaN until a finite one."""
    best = BestSoFar(mode)
    return [best.update(v) for v in values]


def judged_from(warmup_epochs: float, judge_after: float, epochs: int) -> dict[str, float]:
    """The result fields that keep ASHA's rungs off a trial (``search.scheduler.in_warmup``):
    its warm-up, and the space's share ``judge_after`` of its ``epochs``."""
    return {"warmup_epochs": warmup_epochs, "judge_from_epoch": judge_after * epochs}
