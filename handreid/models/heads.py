"""BNNeck: BatchNorm1d with a frozen bias between the embedding and the ID / ArcFace heads."""

from __future__ import annotations

from torch import nn


class BNNeck(nn.BatchNorm1d):
    def __init__(self, dim: int):
        super().__init__(dim)
        self.bias.requires_grad_(False)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
