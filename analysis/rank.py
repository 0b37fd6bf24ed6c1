"""Pure steps: the ranked trial table and the best-per-backbone comparison."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.confirm import Confirmation, winner_test
from analysis.load import TEST_COLUMNS, RunData
from analysis.winners import Chosen, chosen_winners

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


def ranked_table(
    data: RunData, top: int | None = None, marks: dict[str, str] | None = None
) -> pd.DataFrame:
    """All trials ranked by their best validation metric (failed and unscored last);
    ``marks``: trial id -> what it is (``analysis.winners.marks``: winner, tied)."""
    best = data.best_column
    table = data.trials.sort_values(
        best, ascending=data.mode == "min", na_position="last", kind="stable"
    )
    table = table.reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    table["winner"] = table["trial_id"].map(marks or {})
    params = [p for p in data.params if p in table.columns and p != "model.backbone"]
    cols = ["trial_id", "rank", "run", "backbone", "winner", *params, "status_detail", "epochs"]
    cols += ["trial_seconds", best, "best_epoch"]
    cols += [f"test_{k}{s}" for k in TEST_COLUMNS for s in ("", "_std")]
    out = table[cols].rename(columns={"status_detail": "status"})
    return out.head(top) if top else out


def side_by_side(data: RunData, conf: Confirmation | None = None) -> pd.DataFrame:
    """Each backbone's winner (see ``analysis.winners``), parameter by parameter, with a
    `differs` flag; a confirmed winner shows its validation mean over the seeds that chose
    it and its scoring seeds' test means."""
    chosen = chosen_winners(data, conf)
    trials = data.trials.set_index("trial_id")
    params = [p for p in data.params if p != "model.backbone"]
    keys = [*params, data.best_column, "epochs", "trial_seconds", "test_rank1", "test_mAP"]
    columns = {b: _winner_values(data, trials, conf, c, keys) for b, c in chosen.items()}
    rows = [{"parameter": "winner", **{b: c.config_id for b, c in chosen.items()}}]
    for key in keys:
        values = {b: columns[b][key] for b in chosen}
        shown = {"unset" if _missing(v) else repr(v) for v in values.values()}
        differs = len(shown) > 1 if key in params else None
        rows.append({"parameter": key, **values, "differs": differs})
    return pd.DataFrame(rows)


def _winner_values(data: RunData, trials: pd.DataFrame, conf, c: Chosen, keys) -> dict:
    row = _row(trials, c.config_id)
    values = {k: row.get(k, math.nan) for k in keys}
    values[data.best_column] = _winner_val(data, conf, c, row)
    test = _confirmed_test(conf, c)
    if test is not None:
        values.update(test_rank1=test["test_rank1"], test_mAP=test["test_mAP"])
    return values


def _row(trials: pd.DataFrame, trial_id: str) -> pd.Series:
    return trials.loc[trial_id] if trial_id in trials.index else pd.Series(dtype=object)


def comparison_table(data: RunData, conf: Confirmation | None = None) -> pd.DataFrame:
    """Each backbone's winner (the confirmed one where a confirmation ran: validation mean
    over the seeds that chose it, test mean and std over its fresh scoring seeds x splits;
    else the best single run), with the data it was trained on. The reference rows (real
    11k Hands) join only runs on real data under the standard protocol (``DataInfo.
    comparable``); see :func:`reference_table`.

    ``trial_seconds`` is the winner's search trial's time (``analysis.load.TRIAL_TIME``);
    the sum over all trials of the backbone is ``all_trials_seconds``."""
    chosen = chosen_winners(data, conf)
    trials = data.trials.set_index("trial_id")
    ours = [_our_row(data, trials, conf, c) for c in chosen.values()]
    if not data.data.comparable:
        return pd.DataFrame(ours)
    refs = [{**r, "reference": True} for r in reference_table().to_dict("records")]
    return pd.DataFrame([{**r, "reference": False} for r in ours] + refs)


REFERENCE_DATA = "11k Hands dorsal_r (real)"


def reference_table() -> pd.DataFrame:
    """The published and seed results on real 11k Hands: a table of their own beside runs
    that did not train on it."""
    return pd.DataFrame([{**r, "data": REFERENCE_DATA} for r in REFERENCE_ROWS])


def _our_row(data: RunData, trials: pd.DataFrame, conf, c: Chosen) -> dict:
    on_backbone = data.trials[data.trials["backbone"] == c.backbone]
    row = _row(trials, c.config_id)
    test = _confirmed_test(conf, c) or {k: row.get(k, math.nan) for k in TEST_NAMES}
    return {
        "system": _system(conf, c),
        "data": _data_label(data),
        "protocol": "per_aspect",
        "trials": len(on_backbone),
        "trial_seconds": float(row.get("trial_seconds", math.nan)),
        "all_trials_seconds": float(on_backbone["trial_seconds"].sum()),
        data.best_column: _winner_val(data, conf, c, row),
        **{k: test[k] for k in TEST_NAMES},
    }


def _data_label(data: RunData) -> str:
    if data.data.synthetic:
        return "SYNTHETIC (generated hands)"
    return data.data.description if data.data.synthetic is False else "unknown"


def _system(conf, c: Chosen) -> str:
    if not c.confirmed:
        return f"handreid-search {c.backbone}: best single run {c.config_id}"
    if not c.scoring_seeds:
        return f"handreid-search {c.backbone}: confirmed winner {c.config_id} (not scored)"
    test = winner_test(conf.winners[c.backbone])
    return (
        f"handreid-search {c.backbone}: confirmed winner {c.config_id} "
        f"({test['test_seeds']} fresh seeds x {test['test_splits']} splits)"
    )


def _confirmed_test(conf, c: Chosen) -> dict | None:
    if not (c.confirmed and c.scoring_seeds):
        return None
    return winner_test(conf.winners[c.backbone])


def _winner_val(data: RunData, conf, c: Chosen, row) -> float:
    """A confirmed winner's mean validation over the seeds that chose it, else its run's."""
    if c.confirmed:
        rows = conf.configs[
            (conf.configs["backbone"] == c.backbone) & (conf.configs["config_id"] == c.config_id)
        ]
        if len(rows):
            return float(rows["val_mean"].iloc[0])
    return float(row.get(data.best_column, math.nan))


TEST_NAMES = [f"test_{k}{s}" for k in TEST_COLUMNS for s in ("", "_std")]


# ------------------------------------------------------------------ display

UNITS = {"trial_seconds": "s", "all_trials_seconds": "s"}


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
    " .ranked td{white-space:nowrap} .scroll{overflow-x:auto;max-width:100%}"
    # wide tables scroll inside their box; the first column (what the row is) stays in view
    " .ranked th:first-child,.ranked td:first-child{position:sticky;left:0;z-index:1;"
    "background:#fff;box-shadow:1px 0 0 #ccc} .ranked th:first-child{background:#f4f4f4}"
)
