"""The five ReID losses behind one interface and a plain registry.

Each loss is an ``nn.Module`` taking a :class:`LossInputs`; those that own parameters
(classifier, ArcFace, centers) expose them through ``parameters()`` so the trainer puts
every one of them in an optimiser. Every loss computes in float32 with autocast off
(:func:`handreid.losses.functional.float32`), so it behaves the same under CPU and CUDA
autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from handreid.losses.functional import batch_hard_triplet, supcon
from handreid.losses.heads import ArcFace, CenterHead, IdClassifier


@dataclass
class LossInputs:
    feat: torch.Tensor  # pre-BN image embedding
    bn_feat: torch.Tensor  # post-BNNeck embedding
    unit: torch.Tensor  # L2-normalised pre-BN embedding
    text: torch.Tensor  # unit text feature of each sample's class
    labels: torch.Tensor


class IdLoss(nn.Module):
    def __init__(self, dim: int, num_classes: int, label_smoothing: float = 0.1):
        super().__init__()
        self.head = IdClassifier(dim, num_classes, label_smoothing)

    def forward(self, x: LossInputs) -> torch.Tensor:
        return self.head(x.bn_feat, x.labels)


class ArcFaceLoss(nn.Module):
    def __init__(self, dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.5):
        super().__init__()
        self.head = ArcFace(dim, num_classes, scale, margin)

    def forward(self, x: LossInputs) -> torch.Tensor:
        return self.head(x.bn_feat, x.labels)


class SupConLoss(nn.Module):
    """Image-to-text plus text-to-image supervised contrastive loss."""

    def __init__(self, dim: int, num_classes: int, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, x: LossInputs) -> torch.Tensor:
        i2t = supcon(x.unit, x.text, x.labels, x.labels, self.temperature)
        t2i = supcon(x.text, x.unit, x.labels, x.labels, self.temperature)
        return i2t + t2i


class TripletLoss(nn.Module):
    def __init__(self, dim: int, num_classes: int, margin: float = 0.3):
        super().__init__()
        self.margin = margin

    def forward(self, x: LossInputs) -> torch.Tensor:
        return batch_hard_triplet(x.feat, x.labels, self.margin)


class CenterLoss(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.head = CenterHead(dim, num_classes)

    def forward(self, x: LossInputs) -> torch.Tensor:
        return self.head(x.feat, x.labels)


LOSSES: dict[str, type[nn.Module]] = {
    "id": IdLoss,
    "arcface": ArcFaceLoss,
    "supcon": SupConLoss,
    "triplet": TripletLoss,
    "center": CenterLoss,
}


def build_loss(name: str, dim: int, num_classes: int, **kwargs) -> nn.Module:
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[name](dim, num_classes, **kwargs)


def loss_kwargs(name: str, part) -> dict:
    """Constructor arguments of loss ``name`` from its config section."""
    return {
        "id": lambda: {"label_smoothing": part.label_smoothing},
        "arcface": lambda: {"scale": part.scale, "margin": part.margin},
        "supcon": lambda: {"temperature": part.temperature},
        "triplet": lambda: {"margin": part.margin},
        "center": lambda: {},
    }[name]()


class LossSet(nn.Module):
    """The enabled losses with their weights; returns the total and each weighted part."""

    def __init__(self, losses: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.weights = dict(weights)

    def forward(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {name: self.weights[name] * loss(x) for name, loss in self.losses.items()}
        return sum(parts.values()), parts

    def center_parameters(self) -> list[nn.Parameter]:
        return list(self.losses["center"].parameters()) if "center" in self.losses else []

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for name, m in self.losses.items() if name != "center" for p in m.parameters()]


def build_loss_set(loss_cfg, dim: int, num_classes: int) -> LossSet:
    enabled = loss_cfg.enabled()
    losses = {n: build_loss(n, dim, num_classes, **loss_kwargs(n, p)) for n, p in enabled.items()}
    return LossSet(losses, {n: p.weight for n, p in enabled.items()})
