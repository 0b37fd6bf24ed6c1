"""Losses that own parameters: ID classifier, ArcFace and centers (nn.Module heads)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class IdClassifier(nn.Module):
    """Linear classifier over the BNNeck feature, cross-entropy with label smoothing."""

    def __init__(self, dim: int, num_classes: int, label_smoothing: float = 0.1):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.fc.weight, std=0.001)
        self.label_smoothing = label_smoothing

    def forward(self, feat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.fc(feat)
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)


class ArcFace(nn.Module):
    """Additive angular margin: logit of the true class is s*cos(theta + m), others s*cos(theta)."""

    def __init__(self, dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale
        self.margin = margin

    def logits(self, feat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(feat, dim=-1), F.normalize(self.weight, dim=-1))
        cos = cos.clamp(-1 + 1e-7, 1 - 1e-7)
        target = torch.cos(torch.acos(cos.gather(1, labels[:, None])) + self.margin)
        # keep the target logit monotone in theta when theta + m passes pi
        limit = math.cos(math.pi - self.margin)
        fallback = cos.gather(1, labels[:, None]) - math.sin(math.pi - self.margin) * self.margin
        target = torch.where(cos.gather(1, labels[:, None]) > limit, target, fallback)
        return self.scale * cos.scatter(1, labels[:, None], target)

    def forward(self, feat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(feat, labels), labels)


class CenterHead(nn.Module):
    """Center loss 1/2 * mean ||f - c_y||^2. The centers train with their own SGD optimiser."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, dim))

    def forward(self, feat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 0.5 * (feat - self.centers[labels]).pow(2).sum(1).mean()
