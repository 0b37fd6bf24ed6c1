"""Parameter-free ReID losses as plain functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon(
    anchors: torch.Tensor,
    contrasts: torch.Tensor,
    anchor_labels: torch.Tensor,
    contrast_labels: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Supervised contrastive loss of each anchor against all contrasts.

    Positives are the contrasts with the anchor's label, the matched pair included.
    Features are expected L2-normalised.
    """
    logits = anchors @ contrasts.t() / temperature
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (anchor_labels[:, None] == contrast_labels[None, :]).to(log_prob.dtype)
    per_anchor = (positives * log_prob).sum(1) / positives.sum(1).clamp_min(1)
    return -per_anchor.mean()


def batch_hard_triplet(
    feats: torch.Tensor, labels: torch.Tensor, margin: float = 0.3
) -> torch.Tensor:
    """Batch-hard triplet loss (hardest positive, hardest negative) on Euclidean distances."""
    dist = torch.cdist(feats, feats).clamp_min(1e-12)
    same = labels[:, None] == labels[None, :]
    hardest_pos = (dist * same).amax(1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(1)
    valid = torch.isfinite(hardest_neg) & (same.sum(1) > 1)
    if not valid.any():
        return feats.sum() * 0.0
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()
