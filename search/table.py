"""The trial table: Tune's results as ``trials.csv`` rows, and the top-k per backbone.

One row per search trial (``role`` search), and per confirmation or scoring run
(``search.confirm.run_table``); ``top_k`` picks what the wrap-up scores and confirms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from search.space import SearchSpace, config_key


def trial_rows(space: SearchSpace, grid) -> list[dict[str, Any]]:
    """One row per search trial (its own configuration: ``config_id`` is its trial id)."""
    rows = []
    for result in grid:
        row = trial_row(space, result, result.config or {})
        rows.append({**row, "role": "search", "config_id": row["trial_id"]})
    return rows


def search_table(space: SearchSpace, grid) -> pd.DataFrame:
    """The search's trials, best first."""
    table = pd.DataFrame(trial_rows(space, grid))
    metric = f"best_{space.tune.metric}"
    return table.sort_values(metric, ascending=space.tune.mode == "min", na_position="last")


def trial_row(space: SearchSpace, result, params: dict[str, Any]) -> dict[str, Any]:
    """A Tune result as a trials.csv row; ``params``: the trial's parameters (Optuna names)."""
    from search.optuna_search import ending

    metrics = result.metrics or {}
    kind, reason = ending(metrics, result.error is not None)
    if result.error is not None:
        reason = f"error: {str(result.error).strip().splitlines()[-1][:200]}"
    seconds = metrics.get("time_total_s")  # the trial's time, as the terminal prints it
    columns = {config_key(k): v for k, v in params.items()}
    columns.pop("model.backbone", None)  # the backbone column says it
    columns.pop("train.seed", None)  # the train_seed column says it
    cfg = space.trial_config(params)
    return {
        "trial_id": metrics.get("trial_id") or Path(result.path).name,
        "backbone": cfg.model.backbone,
        **columns,
        "status": kind,
        "pruned_at_epoch": metrics.get("epoch") if kind == "pruned" else None,
        "fail_reason": reason,
        "epochs": metrics.get("epoch", 0),
        f"best_{space.tune.metric}": metrics.get("objective"),
        "best_epoch": metrics.get("best_epoch"),
        "trial_seconds": round(float(seconds), 2) if seconds is not None else None,
        "path": result.path,
        "train_seed": cfg.train.seed,
    }


def top_k(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` trials per backbone the wrap-up scores, best first: complete trials by the
    objective, then pruned ones (a trial ASHA stopped was judged worse at its rung, however
    high its early value). ``table`` is sorted best first; confirmation runs are not trials
    of the search and are left out."""
    if "role" in table:
        table = table[table["role"] == "search"]
    usable = table[table["status"].isin(["complete", "pruned"])]
    usable = usable.sort_values("status", key=lambda s: s != "complete", kind="stable")
    return usable.groupby("backbone", sort=False).head(k)


TEST_COLUMNS = (
    "test_rank1",
    "test_rank5",
    "test_rank10",
    "test_mAP",
    "test_rank1_std",
    "test_rank5_std",
    "test_rank10_std",
    "test_mAP_std",
    "test_error",
)


def write_table(table: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
