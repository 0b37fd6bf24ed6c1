"""Feature extraction (once) and the ReID protocols on top of the extracted features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from handreid.data.hands11k import Item
from handreid.data.splits import EvalProtocol
from handreid.eval.metrics import rank_k_and_map, summarize_splits


@torch.no_grad()
def extract_features(
    model,
    loader: DataLoader,
    device: torch.device,
    *,
    flip: bool = False,
    desc: str = "features",
    kind: str = "retrieval",
) -> torch.Tensor:
    """L2-normalised features of every image in ``loader`` (labels are not used): the
    retrieval feature, or with ``kind="unit"`` the unit pre-BN embedding (stage 1)."""
    embed = model.embed if kind == "retrieval" else (lambda x: model.encode_image(x).unit)
    was_training = model.training
    model.eval()
    feats = []
    for images, _labels, _index in tqdm(
        loader, desc=desc, leave=False, disable=len(loader) < 20 or None
    ):
        images = images.to(device, non_blocking=True)
        f = embed(images).float()
        if flip:
            f = F.normalize(f + embed(torch.flip(images, dims=[3])).float(), dim=-1)
        feats.append(f.cpu())
    model.train(was_training)
    return torch.cat(feats) if feats else torch.empty(0)


def evaluate_protocol(features: torch.Tensor, protocol: EvalProtocol) -> dict:
    """Metrics per split (index sets into ``features``), plus mean and std over splits."""
    ids = np.array([it.pid for it in protocol.images])
    feats = features.numpy()
    per_split = []
    for split in protocol.splits:
        sim = feats[split.query] @ feats[split.gallery].T
        per_split.append(rank_k_and_map(sim, ids[split.query], ids[split.gallery]))
    return {
        **summarize_splits(per_split),
        "per_split": per_split,
        "dropped_ids": protocol.dropped_ids,
    }


def evaluate_val(
    val_feats: torch.Tensor,
    val: Sequence[Item],
    gallery_feats: torch.Tensor,
    gallery: Sequence[Item],
) -> dict:
    """Validation: each held-out image queries the training images of the training ids."""
    sim = val_feats.numpy() @ gallery_feats.numpy().T
    return rank_k_and_map(sim, [it.pid for it in val], [it.pid for it in gallery])
