"""Importance at the ASHA rungs, the per-backbone parallel coordinates, start order and the
report's tables as a reader sees them (units, yes/no, no raw None/nan), on fabricated runs."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from analysis import figures
from analysis.cli import main as report_main
from analysis.importance import importance_table, rebuild_study, rung_importance_table, value_at
from analysis.load import asha_rungs, load_run
from analysis.rank import best_per_backbone, comparison_table, side_by_side
from analysis.report import parallel_figures
from tests.test_analysis import fabricate_run, objective

# Ray's ASHA milestones for grace 1, factor 2, max 4: epochs 1, 2 and 4
ASHA = {"grace_period": 1, "reduction_factor": 2, "max_epochs": 4}


def test_rungs_are_asha_milestones_else_the_pruned_epochs():
    meta = {"max_epochs": 15, "tune": {"grace_period": 3, "reduction_factor": 3}}
    assert asha_rungs(meta, [])[0] == [3, 9]  # 27 > 15: no third rung
    assert asha_rungs({"max_epochs": 4, "tune": ASHA}, [])[0] == [1, 2, 4]
    rungs, source = asha_rungs({"max_epochs": 4}, [2, 2, 3, 0])
    assert rungs == [2, 3] and "pruned" in source


def test_rung_importance_counts_every_trial_that_reached_the_rung(tmp_path):
    # per backbone: 16 complete (4 epochs), 6 pruned at epoch 2, 2 failed after 4 epochs
    data = load_run(fabricate_run(tmp_path, tune=ASHA))
    assert data.rungs == [1, 2, 4] and "search.json" in data.rungs_from
    table, notes = rung_importance_table(data)
    assert not notes
    counts = table.groupby(["rung", "backbone"])["n_trials"].agg(set).to_dict()
    assert counts == {(r, b): {n} for r, n in ((1, 24), (2, 24), (4, 18)) for b in "AB"}
    assert set(table["evaluator"]) == {"fANOVA", "PED-ANOVA"}
    for (rung, backbone, evaluator), group in table.groupby(["rung", "backbone", "evaluator"]):
        top = group.sort_values("importance", ascending=False).iloc[0]
        assert top["parameter"] == "optim.lr_visual", (rung, backbone, evaluator)
    # complete-trial importance is unchanged beside it
    assert set(importance_table(data)[0]["n_trials"]) == {16}


def test_the_value_at_a_rung_is_the_metric_at_that_epoch(tmp_path):
    data = load_run(fabricate_run(tmp_path, tune=ASHA))
    at = value_at(data, 2)
    pruned = data.trials[data.trials["status"] == "pruned"].iloc[0]
    assert at[pruned.trial_id] == pytest.approx(
        objective(pruned["optim.lr_visual"]) - 2 - 10 * (pruned.backbone == "B")
    )
    assert pruned.trial_id not in value_at(data, 4)


def test_a_rung_with_too_few_trials_is_skipped_and_said(tmp_path):
    # 4 trials per backbone, one pruned at epoch 2: 3 reach epoch 4
    data = load_run(fabricate_run(tmp_path, n_per_backbone=4, tune=ASHA))
    table, notes = rung_importance_table(data)
    assert set(table["rung"]) == {1, 2}
    assert notes == [
        f"{b} at epoch 4: too few trials for importance (3 reached it; needs 4 with varied "
        "parameters)"
        for b in "AB"
    ]


def test_the_report_names_each_rung_and_its_trial_count(tmp_path):
    run = fabricate_run(tmp_path, n_per_backbone=4, tune=ASHA)
    assert report_main([str(run), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    for rung, n in ((1, 4), (2, 4)):
        assert f"<h2>Parameter importance at ASHA rung epoch {rung}</h2>" in page
        assert f'id="fig-importance-epoch-{rung}"' in page
        assert f"A: {n} trials reached epoch {rung}" in page
    # the skipped rung keeps its section, with the reason and no figure
    section = page.split("<h2>Parameter importance at ASHA rung epoch 4</h2>", 1)[1]
    section = section.split("</section>", 1)[0]
    assert "fig-" not in section and "A at epoch 4: too few trials" in section
    rungs = pd.read_csv(tmp_path / "out" / "importance_rungs.csv")
    assert set(rungs["rung"]) == {1, 2}


def test_parallel_coordinates_draw_one_line_per_trial_at_the_last_rung(tmp_path):
    data = load_run(fabricate_run(tmp_path, tune=ASHA))
    sections = parallel_figures(data)
    assert len(sections) == 2
    for section, backbone in zip(sections.values(), "AB"):
        trials = data.trials[data.trials["backbone"] == backbone]
        reached = (trials["epochs"] >= 4).sum()
        assert reached == 18  # the pruned trials stopped at epoch 2
        assert figures.trial_lines(section.fig) == reached
        assert f"{backbone}: 18 trials reached epoch 4" in section.fig.layout.title.text
    labels = [a.text for a in sections["parallel-0"].fig.layout.annotations]
    assert "yes" in labels and "True" not in labels


def test_trials_are_in_start_order(tmp_path):
    data = load_run(fabricate_run(tmp_path))  # trials start in the reverse order of their ids
    ids = sorted(data.trials["trial_id"])
    assert list(data.trials["trial_id"]) == ids[::-1]
    history = rebuild_study(data, by_key=False)
    assert [t.user_attrs["trial_id"] for t in history.trials] == ids[::-1]
    curves = figures.learning_curves_figure(data)
    named = [t.name.split(" ")[0] for t in curves.data if t.name]
    assert named == ids[::-1]


def test_compute_seconds_is_one_trial_everywhere(tmp_path):
    data = load_run(fabricate_run(tmp_path))  # every epoch 0.5 s
    comparison = comparison_table(data)
    ours = comparison[~comparison["reference"]]
    best = best_per_backbone(data)
    assert list(ours["compute_seconds"]) == list(best["compute_seconds"])
    assert set(best["compute_seconds"]) <= {1.0, 2.0}  # 2 or 4 epochs of 0.5 s
    assert list(ours["total_compute_s"]) == [sum(0.5 * e for e in [4] * 18 + [2] * 6)] * 2
    sides = side_by_side(data).set_index("parameter")
    assert (
        sides.loc["compute_seconds", "A"] == best["compute_seconds"].iloc[0]
        and "total_compute_s" not in sides.index
    )


TABLE = re.compile(r"<table.*?</table>", re.S)
CELL = re.compile(r"<t[dh][^>]*>(.*?)</t[dh]>", re.S)


def _cells(page: str) -> list[str]:
    return [c.strip() for table in TABLE.findall(page) for c in CELL.findall(table)]


def test_tables_read_yes_no_and_dash_with_units(tmp_path):
    run = fabricate_run(tmp_path)
    assert report_main([str(run), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    page = (out / "report.html").read_text()
    cells = _cells(page)
    assert len(cells) > 500
    raw = {"True", "False", "None", "nan", "NaN", "<NA>", ""}
    assert not raw & set(cells), sorted(raw & set(cells))
    assert {"yes", "no", "—"} <= set(cells)
    for header in (
        "best_val_mAP (%)",
        "test_mAP (%)",
        "test_mAP_std (%)",
        "compute_seconds (s)",
        "total_compute_s (s)",
        "best_epoch (epoch)",
        "epochs",
    ):
        assert header in cells, header
    for stem in ("ranked", "comparison", "side_by_side"):
        md = (out / f"{stem}.md").read_text()
        assert not re.search(r"\| (True|False|None|nan) ", md), stem
    # the CSVs stay machine-readable: raw names and values
    csv = pd.read_csv(out / "comparison.csv")
    assert {"compute_seconds", "total_compute_s", "best_val_mAP"} <= set(csv.columns)
    assert json.loads(json.dumps(csv["reference"].tolist())) == [False, False] + [True] * 5
