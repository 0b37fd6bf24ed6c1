"""Losses that own parameters: ID classifier, ArcFace and centers (nn.Module heads).

Each head computes in float32 with autocast off (:func:`float32`), whatever the caller's
autocast, and uses its parameters in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from handreid.losses.functional import float32

EPS = torch.finfo(torch.float32).eps  # floor of sin^2(theta): finite gradient at cos = 1


class IdClassifier(nn.Module):
    """Linear classifier over the BNNeck feature, cross-entropy with label smoothing."""

    def __init__(self, dim: int, num_classes: int, label_smoothing: float = 0.1):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.fc.weight, std=0.001)
        self.label_smoothing = label_smoothing

    @float32
    def forward(self, feat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = F.linear(feat, self.fc.weight.float())
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)


class ArcFace(nn.Module):
    """Additive angular margin: logit of the true class is s*cos(theta + m), others s*cos(theta)."""

    def __init__(self, dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale
        self.margin = margin

    @float32
    def logits(self, feat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(feat, dim=-1), F.normalize(self.weight.float(), dim=-1))
        target = self.add_margin(cos.gather(1, labels[:, None]))
        return self.scale * cos.scatter(1, labels[:, None], target)

    def add_margin(self, cos: torch.Tensor) -> torch.Tensor:
        """cos(theta + m) as cos*cos(m) - sin*sin(m): no acos, so the gradient stays finite
        as cos -> 1. Past theta + m = pi it continues linearly, monotone in theta."""
        m = self.margin
        sin = (1 - cos * cos).clamp_min(EPS).sqrt()
        shifted = cos * math.cos(m) - sin * math.sin(m)
        fallback = cos - math.sin(math.pi - m) * m
        return torch.where(cos > math.cos(math.pi - m), shifted, fallback)

    @float32
    def forward(self, feat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(feat, labels), labels)


class CenterHead(nn.Module):
    """Center loss 1/2 * mean ||f - c_y||^2. The centers train with their own SGD optimiser."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, dim))

    @float32
    def forward(self, feat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 0.5 * (feat - self.centers[labels].float()).pow(2).sum(1).mean()
