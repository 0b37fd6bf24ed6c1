"""Optimisers with parameter groups, and per-batch schedulers over the true step count."""

from __future__ import annotations

import math

import torch
from torch import nn


def make_optimizer(name: str, groups: list[dict]) -> torch.optim.Optimizer:
    groups = [g for g in groups if g["params"]]
    if name == "adam":
        return torch.optim.Adam(groups)
    if name == "adamw":
        return torch.optim.AdamW(groups)
    raise KeyError(f"unknown optimizer {name!r}; valid: adam, adamw")


def stage2_groups(model: nn.Module, losses, optim_cfg) -> list[dict]:
    """Image tower (lr_visual), BNNeck and loss heads (lr_heads). Centers are separate."""
    visual = [p for p in model.visual.parameters() if p.requires_grad]
    heads = [p for p in model.bnneck.parameters() if p.requires_grad] + losses.head_parameters()
    return [
        {
            "params": visual,
            "lr": optim_cfg.lr_visual,
            "weight_decay": optim_cfg.weight_decay,
            "name": "visual",
        },
        {
            "params": heads,
            "lr": optim_cfg.lr_heads,
            "weight_decay": optim_cfg.weight_decay,
            "name": "heads",
        },
    ]


class LRFactor:
    """Multiplier of the base lr at optimiser step ``step``: warmup, then cosine or step decay.

    A plain object (not a lambda) so ``LambdaLR.state_dict`` saves it for resuming.
    """

    def __init__(
        self, kind: str, total_steps: int, warmup_steps: int, step_size: int, gamma: float
    ):
        self.kind, self.total, self.warmup = kind, max(1, total_steps), warmup_steps
        self.step_size, self.gamma = max(1, step_size), gamma

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = step - self.warmup
        if self.kind == "cosine":
            span = max(1, self.total - self.warmup)
            return 0.5 * (1 + math.cos(math.pi * min(t, span) / span))
        if self.kind == "step":
            return self.gamma ** (t // self.step_size)
        raise KeyError(self.kind)


ONECYCLE_WARMUP = 0.3  # OneCycle's warm-up share of the schedule when warmup_epochs is 0


def warmup_epochs(kind: str, warmup: float, epochs: int) -> float:
    """Epochs before the learning rate reaches its peak: ``optim.warmup_epochs``, or for
    OneCycle without one, its default warm-up (a share of all epochs)."""
    if kind == "onecycle" and not warmup:
        return ONECYCLE_WARMUP * epochs
    return float(warmup)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    step_epochs: int = 10,
    gamma: float = 0.1,
):
    """A scheduler to be stepped once per optimiser step (never per epoch)."""
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if kind == "onecycle":
        pct = warmup / total_steps if warmup else ONECYCLE_WARMUP
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(2, total_steps),
            pct_start=min(max(pct, 0.01), 0.9),
        )
    if kind in ("cosine", "step"):
        factor = LRFactor(kind, total_steps, warmup, step_epochs * steps_per_epoch, gamma)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    raise KeyError(f"unknown scheduler {kind!r}; valid: cosine, onecycle, step")
