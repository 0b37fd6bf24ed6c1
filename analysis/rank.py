"""Pure steps: the ranked trial table and the best-per-backbone comparison."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.confirm import Confirmation, winner_test
from analysis.load import TEST_COLUMNS, RunData

# METHOD.md section 6 (11k dorsal_r). The seed's numbers were chosen on test data, one
# unseeded run each; they are references, not a like-for-like comparison.
REFERENCE_ROWS = [
    {
        "system": "seed best ViT-B/16 (v5, manual)",
        "protocol": "per_aspect",
        "test_rank1": 88.18,
        "test_mAP": 92.20,
    },
    {
        "system": "seed best RN50 (v9, manual; 53.43 R1 on a rerun)",
        "protocol": "per_aspect",
        "test_rank1": 59.84,
        "test_mAP": 69.80,
    },
    {
        "system": "zero-shot CLIP ViT-B/16",
        "protocol": "per_aspect",
        "test_rank1": 71.42,
        "test_mAP": 78.98,
    },
    {
        "system": "zero-shot CLIP RN50",
        "protocol": "per_aspect",
        "test_rank1": 68.61,
        "test_mAP": 75.78,
    },
    {
        "system": "MBA-Net (ICPR 2022)",
        "protocol": "gallery_all",
        "test_rank1": 97.45,
        "test_mAP": 97.98,
    },
]


def ranked_table(data: RunData, top: int | None = None) -> pd.DataFrame:
    """All trials ranked by their best validation metric (failed and unscored last)."""
    best = data.best_column
    table = data.trials.sort_values(
        best, ascending=data.mode == "min", na_position="last", kind="stable"
    )
    table = table.reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    params = [p for p in data.params if p in table.columns and p != "model.backbone"]
    cols = [
        "rank",
        "run",
        "trial_id",
        "backbone",
        *params,
        "status_detail",
        "epochs",
        "compute_seconds",
        best,
        "best_epoch",
    ]
    cols += [f"test_{k}{s}" for k in TEST_COLUMNS for s in ("", "_std")]
    out = table[cols].rename(columns={"status_detail": "status"})
    return out.head(top) if top else out


def best_per_backbone(data: RunData) -> pd.DataFrame:
    """The best usable trial of each backbone, best first: its best complete trial, else
    (none complete) its best pruned one, as the search's wrap-up picks it."""
    usable = data.trials[data.trials["status"] != "failed"].dropna(subset=[data.best_column])
    ordered = usable.sort_values(data.best_column, ascending=data.mode == "min", kind="stable")
    ordered = ordered.sort_values("status", key=lambda s: s != "complete", kind="stable")
    return ordered.groupby("backbone", sort=False).head(1).reset_index(drop=True)


def side_by_side(data: RunData) -> pd.DataFrame:
    """The best configuration of each backbone, parameter by parameter, with a `differs` flag."""
    best = best_per_backbone(data)
    params = [p for p in data.params if p != "model.backbone"]
    rows = []
    for key in [*params, data.best_column, "epochs", "compute_seconds", "test_rank1", "test_mAP"]:
        # compute_seconds: the training time of that one trial
        values = {
            b: best.loc[i, key] if key in best else math.nan for i, b in enumerate(best["backbone"])
        }
        shown = {"unset" if _missing(v) else repr(v) for v in values.values()}
        rows.append(
            {
                "parameter": key,
                **values,
                "differs": len(shown) > 1 if key in params else None,
            }
        )
    return pd.DataFrame(rows)


def comparison_table(data: RunData, conf: Confirmation | None = None) -> pd.DataFrame:
    """Our best per backbone (validation-selected, test scored) beside the reference rows;
    with a confirmation stage, each backbone's confirmed winner too (validation: mean over
    seeds; test: mean and std over seeds x splits).

    ``compute_seconds`` is the best trial's own training time, as everywhere; the sum over
    all trials of the backbone is ``total_compute_s``."""
    best = best_per_backbone(data)
    counts = data.trials.groupby("backbone").size()
    compute = data.trials.groupby("backbone")["compute_seconds"].sum()
    ours = [
        {
            "system": f"handreid-search best {row.backbone} (trial {row.trial_id})",
            "protocol": "per_aspect",
            "reference": False,
            "trials": int(counts[row.backbone]),
            "compute_seconds": float(row.compute_seconds),
            "total_compute_s": float(compute[row.backbone]),
            data.best_column: getattr(row, data.best_column),
            **{
                f"test_{k}{s}": getattr(row, f"test_{k}{s}")
                for k in TEST_COLUMNS
                for s in ("", "_std")
            },
        }
        for row in best.itertuples()
    ]
    ours += confirmed_rows(data, conf) if conf is not None else []
    return pd.DataFrame(ours + [{**r, "reference": True} for r in REFERENCE_ROWS])


TEST_NAMES = [f"test_{k}{s}" for k in TEST_COLUMNS for s in ("", "_std")]


def confirmed_rows(data: RunData, conf: Confirmation) -> list[dict]:
    counts = data.trials.groupby("backbone").size()
    rows = []
    for backbone in conf.backbones:
        w = conf.winners.get(backbone)
        if w is None or not w.seeds:
            continue
        test = winner_test(w)
        rows.append(
            {
                "system": f"handreid-search confirmed {backbone} (config {w.config_id}, "
                f"{test['test_seeds']} seeds x {test['test_splits']} splits)",
                "protocol": "per_aspect",
                "reference": False,
                "trials": int(counts.get(backbone, 0)),
                data.best_column: w.val_mean,
                **{c: test[c] for c in TEST_NAMES},
            }
        )
    return rows


# ------------------------------------------------------------------ display

UNITS = {"compute_seconds": "s", "total_compute_s": "s"}


def unit_label(name: str) -> str:
    """A column (or side-by-side row) name with its unit: metrics in %, times in s."""
    base = name.removeprefix("best_").removeprefix("test_").removesuffix("_std")
    if name in UNITS:
        return f"{name} ({UNITS[name]})"
    if name == "best_epoch":
        return "best_epoch (epoch)"
    if name != base and (base.startswith(("mAP", "rank", "val_mAP", "val_rank"))):
        return f"{name} (%)"
    return name


def for_display(df: pd.DataFrame) -> pd.DataFrame:
    """Every cell as text (yes/no for booleans, "—" for nothing) under headers with units."""
    out = df.map(_cell).rename(columns=unit_label)
    if "parameter" in out.columns:  # side by side: the rows are named, not the columns
        out["parameter"] = out["parameter"].map(unit_label)
    return out


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ------------------------------------------------------------------ export


def _cell(value) -> str:
    if _missing(value):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if value.is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.4g}" if abs(value) < 1e-2 else f"{value:.2f}"
    return str(value)


def to_markdown(df: pd.DataFrame) -> str:
    df = for_display(df)
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = [
        "| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |"
        for row in df.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body]) + "\n"


def to_html(df: pd.DataFrame, title: str = "") -> str:
    table = for_display(df).to_html(index=False, border=0, classes="ranked")
    table = f"<div class='scroll'>{table}</div>"
    return f"<h2>{title}</h2>\n{table}" if title else table


def export(df: pd.DataFrame, stem, title: str) -> list:
    """Write ``stem``.csv, .md and .html; returns the paths."""
    paths = [stem.with_suffix(ext) for ext in (".csv", ".md", ".html")]
    df.to_csv(paths[0], index=False)
    paths[1].write_text(f"# {title}\n\n" + to_markdown(df))
    paths[2].write_text(
        f"<!doctype html><meta charset='utf-8'><title>{title}</title>"
        f"<style>{TABLE_CSS}</style>{to_html(df, title)}"
    )
    return paths


TABLE_CSS = (
    "body{font-family:sans-serif;margin:1.5em} table.ranked{border-collapse:collapse;"
    "font-size:12px} .ranked th,.ranked td{padding:3px 8px;border-bottom:1px solid #ddd;"
    "text-align:right} .ranked th{background:#f4f4f4} .ranked td:first-child{text-align:left}"
    " .ranked td{white-space:nowrap} .scroll{overflow-x:auto}"
)
