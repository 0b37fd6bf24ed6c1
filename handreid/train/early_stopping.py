"""Early stopping on the validation curve, never inside the warm-up.

The rule is the one ASHA's rungs follow (``search.scheduler.in_warmup``): an epoch up to the
warm-up's end (``optim.warmup_epochs``, or OneCycle's share) or before ``train.patience_after``
of the epochs is not judged. Such epochs still set the best checkpoint; they only do not
count against patience, so a run stops at the earliest ``patience`` epochs after both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def first_judged_epoch(warmup: float, share: float, epochs: int) -> int:
    """The first epoch that counts against patience: past ``warmup`` epochs and not before
    ``share`` of ``epochs``."""
    return max(math.floor(warmup) + 1, math.ceil(share * epochs))


def bad_epochs(val_curve: Sequence[float], from_epoch: int) -> int:
    """Epochs since the best one (the first of equal bests), counting only epochs from
    ``from_epoch`` on. ``val_curve[i]`` is the score of epoch ``i + 1``."""
    best, bad = -math.inf, 0
    for epoch, value in enumerate(val_curve, start=1):
        if value > best:
            best, bad = value, 0
        elif epoch >= from_epoch:
            bad += 1
    return bad


def should_stop(val_curve: Sequence[float], patience: int, from_epoch: int) -> bool:
    """Whether a run with this validation curve stops now (``patience`` 0: never)."""
    return patience > 0 and bad_epochs(val_curve, from_epoch) >= patience
