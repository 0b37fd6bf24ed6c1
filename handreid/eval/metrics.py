"""Retrieval metrics as pure, vectorised functions on arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rank_k_and_map(
    sim: np.ndarray, q_ids: Sequence, g_ids: Sequence, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """CMC Rank-k and mAP in percent, over queries that have at least one true match.

    ``sim`` is (num_query, num_gallery), larger = more similar. Ties keep gallery order.
    Returns ``rank{k}`` for each k, ``mAP`` and ``num_valid_queries``.
    """
    sim = np.asarray(sim)
    q_ids, g_ids = np.asarray(q_ids), np.asarray(g_ids)
    order = np.argsort(-sim, axis=1, kind="stable")
    matches = g_ids[order] == q_ids[:, None]
    valid = matches.any(axis=1)
    matches = matches[valid]
    out: dict[str, float] = {}
    if not len(matches):
        return {
            **{f"rank{k}": float("nan") for k in ks},
            "mAP": float("nan"),
            "num_valid_queries": 0,
        }
    first_hit = matches.argmax(axis=1)
    for k in ks:
        out[f"rank{k}"] = 100.0 * float(np.mean(first_hit < k))
    hits = np.cumsum(matches, axis=1)
    precision = hits / np.arange(1, matches.shape[1] + 1)
    ap = (precision * matches).sum(axis=1) / matches.sum(axis=1)
    out["mAP"] = 100.0 * float(ap.mean())
    out["num_valid_queries"] = int(valid.sum())
    return out


def rank_k_and_map_naive(sim, q_ids, g_ids, ks=(1, 5, 10)) -> dict[str, float]:
    """Per-query loop reference for :func:`rank_k_and_map` (used in tests and benchmarks)."""
    hits_at = {k: 0 for k in ks}
    aps = []
    for i in range(len(q_ids)):
        ranked = sorted(range(len(g_ids)), key=lambda j: (-sim[i][j], j))
        relevant = [g_ids[j] == q_ids[i] for j in ranked]
        if not any(relevant):
            continue
        first = relevant.index(True)
        for k in ks:
            hits_at[k] += first < k
        found, precisions = 0, []
        for rank, rel in enumerate(relevant, start=1):
            if rel:
                found += 1
                precisions.append(found / rank)
        aps.append(sum(precisions) / len(precisions))
    n = len(aps)
    out = {f"rank{k}": 100.0 * hits_at[k] / n if n else float("nan") for k in ks}
    out["mAP"] = 100.0 * sum(aps) / n if n else float("nan")
    out["num_valid_queries"] = n
    return out


def summarize_splits(per_split: list[dict[str, float]]) -> dict[str, float]:
    """Mean and (population) standard deviation of each metric over splits."""
    out: dict[str, float] = {}
    for key in ("rank1", "rank5", "rank10", "mAP"):
        values = np.array([m[key] for m in per_split if key in m], dtype=float)
        if len(values):
            out[key] = float(values.mean())
            out[f"{key}_std"] = float(values.std())
    return out
