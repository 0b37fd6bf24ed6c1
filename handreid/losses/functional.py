"""Parameter-free ReID losses as plain functions, and the fp32 guard every loss runs under."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _fp32(x):
    return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def float32(fn):
    """Run ``fn`` with autocast off and its floating-point tensor arguments in float32.

    Under CUDA autocast, matmuls return bf16 while ``acos``, ``exp``, ``softmax``, ``cdist``
    ... return fp32, so loss math mixing the two fails (``scatter``) or loses precision.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        with torch.autocast(device_type=tensors[0].device.type, enabled=False):
            return fn(*map(_fp32, args), **{k: _fp32(v) for k, v in kwargs.items()})

    return wrapper


@float32
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


@float32
def batch_hard_triplet(
    feats: torch.Tensor, labels: torch.Tensor, margin: float = 0.3
) -> torch.Tensor:
    """Batch-hard triplet loss (hardest positive, hardest negative) on Euclidean distances.

    The mean runs over anchors with a positive and a negative; with none it is 0 (with a
    graph). No Python branch on tensor values, so no host sync.
    """
    dist = torch.cdist(feats, feats).clamp_min(1e-12)
    same = labels[:, None] == labels[None, :]
    hardest_pos = (dist * same).amax(1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(1)
    valid = torch.isfinite(hardest_neg) & (same.sum(1) > 1)
    per_anchor = F.relu(hardest_pos - hardest_neg + margin) * valid
    return per_anchor.sum() / valid.sum().clamp_min(1)
