"""Importance at the ASHA rungs, the per-backbone parallel coordinates, start order and the
report's tables as a reader sees them (units, yes/no, no raw None/nan), on fabricated runs."""

from __future__ import annotations

import html
import json
import re

import pandas as pd
import pytest

from analysis import figures
from analysis.cli import main as report_main
from analysis.importance import importance_table, rebuild_study, rung_importance_table, value_at
from analysis.load import TRIAL_TIME, asha_rungs, load_run
from analysis.rank import comparison_table, side_by_side
from analysis.sections import parallel_figures
from analysis.winners import best_per_backbone, chosen_winners
from tests.test_analysis import fabricate_run, objective

# Ray's ASHA milestones for grace 1, factor 2, max 4: epochs 1, 2 and 4; 4 is the last epoch,
# where trials finish, so the rungs are 1 and 2
ASHA = {"grace_period": 1, "reduction_factor": 2, "max_epochs": 4}
THREE = {"rungs": [1, 2, 3]}  # tune.scheduler.rungs: a rung at 3 that the pruned trials miss


def test_rungs_are_asha_milestones_before_the_last_epoch_else_the_pruned_epochs():
    meta = {"max_epochs": 15, "tune": {"grace_period": 3, "reduction_factor": 3}}
    assert asha_rungs(meta, [])[0] == [3, 9]  # 27 > 15: no third rung
    assert asha_rungs({"max_epochs": 4, "tune": ASHA}, [])[0] == [1, 2]
    # the demo: grace 4, factor 3, 12 epochs; Ray's milestone at 12 is the end, not a rung
    demo = {"max_epochs": 12, "tune": {"grace_period": 4, "reduction_factor": 3}}
    assert asha_rungs(demo, [])[0] == [4]
    assert asha_rungs({"max_epochs": 4, "tune": {"rungs": [2, 4]}}, [])[0] == [2]
    rungs, source = asha_rungs({"max_epochs": 4}, [2, 2, 3, 0])
    assert rungs == [2, 3] and "pruned" in source


def test_rung_importance_counts_every_trial_that_reached_the_rung(tmp_path):
    # per backbone: 16 complete (4 epochs), 6 pruned at epoch 2, 2 failed after 4 epochs
    data = load_run(fabricate_run(tmp_path, tune=THREE))
    assert data.rungs == [1, 2, 3] and "search.json" in data.rungs_from
    table, notes = rung_importance_table(data)
    assert not notes
    counts = table.groupby(["rung", "backbone"])["n_trials"].agg(set).to_dict()
    assert counts == {(r, b): {n} for r, n in ((1, 24), (2, 24), (3, 18)) for b in "AB"}
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
    # 4 trials per backbone, one pruned at epoch 2: 3 reach epoch 3
    data = load_run(fabricate_run(tmp_path, n_per_backbone=4, tune=THREE))
    table, notes = rung_importance_table(data)
    assert set(table["rung"]) == {1, 2}
    assert notes == [
        f"{b} at epoch 3: too few trials for importance (3 reached it; needs 4 with varied "
        "parameters)"
        for b in "AB"
    ]


def test_the_report_names_each_rung_and_its_trial_count(tmp_path):
    run = fabricate_run(tmp_path, n_per_backbone=4, tune=THREE)
    assert report_main([str(run), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    for rung, n in ((1, 4), (2, 4)):
        assert f"<h2>Parameter importance at the ASHA rung at epoch {rung}</h2>" in page
        assert f'id="fig-importance-epoch-{rung}"' in page
        assert f"A: {n} trials reached epoch {rung}" in page
    # the skipped rung keeps its section, with the reason and no figure
    section = page.split("<h2>Parameter importance at the ASHA rung at epoch 3</h2>", 1)[1]
    section = section.split("</section>", 1)[0]
    assert "fig-" not in section and "A at epoch 3: too few trials" in section
    # the last epoch is no rung: no importance section there
    assert "rung at epoch 4" not in page
    rungs = pd.read_csv(tmp_path / "out" / "importance_rungs.csv")
    assert set(rungs["rung"]) == {1, 2}


def test_parallel_coordinates_draw_one_line_per_trial_at_the_last_rung(tmp_path):
    data = load_run(fabricate_run(tmp_path, tune=THREE))
    chosen = chosen_winners(data, None)
    sections = parallel_figures(data, chosen)
    assert len(sections) == 2
    for section, backbone in zip(sections.values(), "AB"):
        trials = data.trials[data.trials["backbone"] == backbone]
        reached = (trials["epochs"] >= 3).sum()
        assert reached == 18  # the pruned trials stopped at epoch 2
        assert figures.trial_lines(section.fig) == reached
        assert f"{backbone}: 18 trials reached epoch 3" in section.fig.layout.title.text
        (winner,) = [t for t in section.fig.data if t.showlegend]  # drawn last, thick
        assert winner is section.fig.data[-1] and winner.line.width == 6
        assert winner.name == f"★ winner {chosen[backbone].config_id}"
    labels = [a.text for a in sections["parallel-0"].fig.layout.annotations]
    assert "yes" in labels and "True" not in labels


def test_trials_are_in_start_order(tmp_path):
    data = load_run(fabricate_run(tmp_path))  # trials start in the reverse order of their ids
    ids = sorted(data.trials["trial_id"])
    assert list(data.trials["trial_id"]) == ids[::-1]
    history = rebuild_study(data, by_key=False)
    assert [t.user_attrs["trial_id"] for t in history.trials] == ids[::-1]
    curves = figures.learning_curves_figure(data, {})
    named = [t.name for t in curves.data if t.mode == "lines" and t.x[0] is not None]
    assert named == ids[::-1]


def test_trial_seconds_is_one_definition_everywhere(tmp_path):
    """The report's trial time is Tune's time_total_s, the time the terminal prints for a
    trial (search.progress.trial_line), not the sum of the epochs' training time."""
    from search.progress import trial_line

    run = fabricate_run(tmp_path)  # every epoch 0.5 s of training, 0.75 s in Tune's count
    data = load_run(run)
    comparison = comparison_table(data)
    ours = comparison[~comparison["reference"]]
    best = best_per_backbone(data)
    assert list(ours["trial_seconds"]) == list(best["trial_seconds"])
    assert set(best["trial_seconds"]) <= {1.5, 3.0}  # 2 or 4 epochs
    assert list(ours["all_trials_seconds"]) == [sum(0.75 * e for e in [4] * 18 + [2] * 6)] * 2
    sides = side_by_side(data).set_index("parameter")
    assert sides.loc["trial_seconds", "A"] == best["trial_seconds"].iloc[0]
    assert "all_trials_seconds" not in sides.index
    trial = best.iloc[0]
    last = json.loads(
        (run / f"trial_{trial.trial_id}" / "result.json").read_text().splitlines()[-1]
    )
    line = trial_line(trial.trial_id, {**last, "objective": 1.0}, "val_mAP")
    assert line.endswith(f", {trial.trial_seconds:.0f} s")
    page = report_main([str(run), "--out", str(tmp_path / "out")]) == 0
    assert page and TRIAL_TIME in html.unescape((tmp_path / "out" / "report.html").read_text())


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
        "trial_seconds (s)",
        "all_trials_seconds (s)",
        "best_epoch (epoch)",
        "epochs",
    ):
        assert header in cells, header
    for stem in ("ranked", "comparison", "side_by_side"):
        md = (out / f"{stem}.md").read_text()
        assert not re.search(r"\| (True|False|None|nan) ", md), stem
    # the CSVs stay machine-readable: raw names and values
    csv = pd.read_csv(out / "comparison.csv")
    assert {"trial_seconds", "all_trials_seconds", "best_val_mAP"} <= set(csv.columns)
    assert json.loads(json.dumps(csv["reference"].tolist())) == [False, False] + [True] * 5
