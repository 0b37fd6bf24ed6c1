"""The report's pure steps on fabricated runs with known answers, the exports, and the
rendered HTML in a real headless Chromium."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.cli import main as report_main
from analysis.importance import importance_table, rebuild_study
from analysis.load import ReportError, load_run, load_runs
from analysis.rank import REFERENCE_ROWS, comparison_table, ranked_table, side_by_side
from tests.conftest import REPO

ARTIFACTS = REPO / "test-artifacts"

DISTRIBUTIONS = {
    "model.backbone": {"key": "model.backbone", "type": "categorical", "choices": ["A", "B"]},
    "optim.lr_visual": {
        "key": "optim.lr_visual",
        "type": "float",
        "low": 0.0,
        "high": 1.0,
        "log": False,
    },
    "loss.arcface.scale": {
        "key": "loss.arcface.scale",
        "type": "float",
        "low": 0.0,
        "high": 1.0,
        "log": False,
    },
    "loss.triplet.use": {"key": "loss.triplet.use", "type": "bool"},
}


REAL_DATA = {"synthetic": False, "root": "/data/11k-256", "aspect": "dorsal_r", "split": "standard"}
SYNTHETIC_DATA = {"synthetic": True, "root": None, "aspect": "dorsal_r", "split": "random"}


def objective(x: float) -> float:
    """Depends on optim.lr_visual only; the other parameters are noise-free decoys."""
    return 100.0 - 300.0 * (x - 0.3) ** 2


def fabricate_run(
    root: Path,
    name: str = "fab",
    *,
    n_per_backbone: int = 24,
    seed: int = 0,
    metric: str = "val_mAP",
    finished: bool = True,
    all_fail: bool = False,
    tune: dict | None = None,
    data: dict | None = None,
) -> Path:
    """Backbones A and B, ``n_per_backbone`` trials each; trial ``i`` is failed when
    ``i % 11 == 10``, pruned at epoch 2 when ``i % 4 == 3``, else complete after 4 epochs.
    Trials start in the reverse order of their ids. ``tune``: search.json's tune block (the
    ASHA settings); without it the rungs come from the pruned epochs. ``data``: search.json's
    data block (default: real 11k-layout images, so the reference rows join the comparison)."""
    rng = np.random.default_rng(seed)
    run = root / name
    run.mkdir(parents=True)
    (run / "search.json").write_text(
        json.dumps(
            {
                "name": name,
                "metric": metric,
                "mode": "max",
                "max_epochs": 4,
                "base_backbone": "A",
                "params": [d["key"] for d in DISTRIBUTIONS.values()],
                "distributions": DISTRIBUTIONS,
                **({"tune": tune} if tune else {}),
                "data": data or REAL_DATA,
            }
        )
    )
    rows = []
    for b, backbone in enumerate(["A", "B"]):
        for i in range(n_per_backbone):
            tid = f"{b}{i:03d}"
            params = {
                "model.backbone": backbone,
                "optim.lr_visual": float(rng.uniform()),
                "loss.arcface.scale": float(rng.uniform()),
                "loss.triplet.use": bool(rng.integers(2)),
            }
            final = objective(params["optim.lr_visual"]) - 10 * b  # B is 10 points worse
            kind = (
                "failed" if all_fail or i % 11 == 10 else ("pruned" if i % 4 == 3 else "complete")
            )
            epochs = 2 if kind == "pruned" else 4
            started = 1_700_000_000 + 100 * (2 * n_per_backbone - b * n_per_backbone - i)
            results = []
            for e in range(1, epochs + 1):
                status = {
                    "complete": "done" if e == 4 else "running",
                    "pruned": "running",
                    "failed": "diverged" if e == epochs else "running",
                }[kind]
                results.append(
                    {
                        "epoch": e,
                        metric: final - 4 + e,
                        "epoch_seconds": 0.5,
                        "time_total_s": 0.75 * e,  # epochs plus validation and set-up
                        "timestamp": started + e,
                        "status": status,
                        "error": "non-finite loss" if status == "diverged" else None,
                    }
                )
            folder = run / f"trial_{tid}"
            folder.mkdir()
            (folder / "params.json").write_text(json.dumps(params))
            (folder / "result.json").write_text("\n".join(json.dumps(r) for r in results) + "\n")
            rows.append(
                {
                    "trial_id": tid,
                    "backbone": backbone,
                    "status": kind,
                    "fail_reason": "diverged: non-finite loss" if kind == "failed" else None,
                    "test_rank1": 50.0 + i if i < 2 and kind != "failed" else None,
                    "test_rank1_std": 1.0 if i < 2 and kind != "failed" else None,
                    "test_mAP": 60.0 + i if i < 2 and kind != "failed" else None,
                    "test_mAP_std": 2.0 if i < 2 and kind != "failed" else None,
                }
            )
    if finished:
        pd.DataFrame(rows).to_csv(run / "trials.csv", index=False)
    return run


def test_importance_ranks_the_only_parameter_that_matters_first(tmp_path):
    data = load_run(fabricate_run(tmp_path))
    table, notes = importance_table(data)
    assert not notes
    for (backbone, evaluator), group in table.groupby(["backbone", "evaluator"]):
        top = group.sort_values("importance", ascending=False).iloc[0]
        assert top["parameter"] == "optim.lr_visual", (backbone, evaluator)
        assert top["importance"] > 0.5
        # only COMPLETE trials count: 24 trials, 6 pruned, 2 failed
        assert set(group["n_trials"]) == {16}
    assert set(table["evaluator"]) == {"fANOVA", "PED-ANOVA"}


def test_rebuilt_study_keeps_pruned_and_failed_states(tmp_path):
    data = load_run(fabricate_run(tmp_path))
    study = rebuild_study(data, backbone="A")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 16 and states.count("PRUNED") == 6
    assert states.count("FAIL") == 2
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert all(sorted(t.intermediate_values) == [1, 2] for t in pruned)
    best = study.best_trial
    assert best.params["optim.lr_visual"] == pytest.approx(
        data.trials[data.trials.backbone == "A"]
        .sort_values("best_val_mAP")
        .iloc[-1]["optim.lr_visual"]
    )


def test_ranked_table_orders_by_validation_and_describes_status(tmp_path):
    data = load_run(fabricate_run(tmp_path))
    ranked = ranked_table(data)
    assert list(ranked["rank"]) == list(range(1, 49))
    values = ranked["best_val_mAP"].tolist()
    assert values == sorted(values, reverse=True)
    assert set(ranked["status"]) == {
        "complete",
        "pruned at epoch 2",
        "failed: diverged: non-finite loss",
    }
    assert ranked.iloc[0]["backbone"] == "A"
    assert {
        "optim.lr_visual",
        "loss.arcface.scale",
        "loss.triplet.use",
        "epochs",
        "trial_seconds",
        "test_rank1",
        "test_mAP_std",
    } <= set(ranked.columns)
    assert ranked["trial_seconds"].max() == pytest.approx(3.0)  # Tune's time_total_s
    assert len(ranked_table(data, top=5)) == 5


def test_side_by_side_and_reference_rows(tmp_path):
    data = load_run(fabricate_run(tmp_path))
    sides = side_by_side(data).set_index("parameter")
    assert list(sides.columns[:2]) == ["A", "B"]
    assert sides.loc["best_val_mAP", "A"] > sides.loc["best_val_mAP", "B"]
    assert bool(sides.loc["optim.lr_visual", "differs"]) is True
    comparison = comparison_table(data)
    assert comparison["system"].str.contains("A: best single run").sum() == 1
    refs = comparison[comparison["reference"] == True]  # noqa: E712
    assert len(refs) == len(REFERENCE_ROWS)
    assert refs.iloc[0]["test_mAP"] == 92.20 and refs.iloc[1]["test_mAP"] == 69.80


def test_a_search_in_progress_is_reported_as_far_as_it_got(tmp_path):
    run = fabricate_run(tmp_path, finished=False)
    data = load_run(run)
    assert not data.finished
    counts = data.trials["status"].value_counts().to_dict()
    # without trials.csv or a study, trials still reporting "running" are running
    assert counts == {"complete": 32, "running": 12, "failed": 4}
    result = report_main([str(run), "--out", str(tmp_path / "out")])
    assert result == 0 and (tmp_path / "out" / "report.html").is_file()


def test_several_runs_merge(tmp_path):
    a = fabricate_run(tmp_path, "vit", seed=1)
    b = fabricate_run(tmp_path, "rn", seed=2)
    data = load_runs([a, b])
    assert data.runs == ["vit", "rn"] and len(data.trials) == 96
    assert set(ranked_table(data)["run"]) == {"vit", "rn"}


def test_exports_hold_the_ranked_table(tmp_path, capsys):
    run = fabricate_run(tmp_path)
    assert report_main([str(run), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    csv = pd.read_csv(out / "ranked.csv", dtype={"trial_id": str})
    assert len(csv) == 48 and csv["best_val_mAP"].is_monotonic_decreasing
    md = (out / "ranked.md").read_text().splitlines()
    assert md[0].startswith("# All trials") and md[2].startswith(
        "| trial_id | rank | run | backbone | winner"
    )
    assert len([line for line in md if line.startswith("| ")]) == 48 + 2
    html = (out / "comparison.html").read_text()
    assert "<table" in html and "seed best ViT-B/16" in html
    # header, rule, one row per backbone, the reference rows
    assert (out / "comparison.md").read_text().count("\n| ") == 2 + 2 + len(REFERENCE_ROWS)
    page = (out / "report.html").read_text()
    assert (
        page.count('id="fig-') == len(FIGURES) and "<script src=" not in page
    )  # plotly.js embedded
    assert "report.html" in capsys.readouterr().out


def _with_meta_only(path: Path) -> Path:
    (path / "search.json").write_text(json.dumps({"metric": "val_mAP", "mode": "max"}))
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "not a run directory"),
        (lambda p: _with_meta_only(p), "empty run"),
        (lambda p: fabricate_run(p, all_fail=True), "every trial failed"),
        (lambda p: p / "missing", "not a folder"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, make, message):
    target = make(tmp_path)
    assert report_main([str(target), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err


def test_runs_with_different_metrics_are_refused(tmp_path, capsys):
    a = fabricate_run(tmp_path, "a")
    b = fabricate_run(tmp_path, "b", metric="val_rank1")
    assert report_main([str(a), str(b)]) == 2
    assert "different metrics: a: val_mAP (max), b: val_rank1 (max)" in capsys.readouterr().err
    with pytest.raises(ReportError):
        load_runs([a, b])


def test_png_without_a_browser_says_how_and_still_writes_html(tmp_path, capsys, monkeypatch):
    import analysis.report as report

    monkeypatch.setattr(report, "find_chromium", lambda: None)
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    run = fabricate_run(tmp_path)
    assert report_main([str(run), "--out", str(tmp_path / "out"), "--png"]) == 0
    out = capsys.readouterr().out
    assert "apt-get install chromium" in out
    assert (tmp_path / "out" / "report.html").is_file() and not (tmp_path / "out" / "png").exists()


def _chromium() -> str:
    path = shutil.which("chromium")
    assert path, "Debian's chromium is needed (make test installs it)"
    return path


CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=20000",
]


# the sections of a fabricated run: its one rung (no tune block) is the pruned epoch, 2
FIGURES = [
    "progress",
    "importance",
    "importance-epoch-2",
    "parallel-0",
    "parallel-1",
    "history",
    "curves",
    "backbones",
]
IMPORTANCE_FIGURES = ("importance", "importance-epoch-2")


def test_report_renders_every_figure_in_headless_chromium(tmp_path):
    run = fabricate_run(tmp_path)
    assert report_main([str(run), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").resolve()
    dom = subprocess.run(
        [
            _chromium(),
            *CHROME_FLAGS,
            f"--user-data-dir={tmp_path / 'p1'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    figures = dom.split('id="fig-')[1:]
    drawn = {chunk.split('"', 1)[0]: chunk.split("</section>", 1)[0] for chunk in figures}
    assert list(drawn) == FIGURES
    for name, body in drawn.items():
        assert 'class="main-svg"' in body, name  # plotly drew its SVG
        assert "<path" in body or "<rect" in body, name  # and something in it
    for name in IMPORTANCE_FIGURES:  # one bar per parameter, evaluator and backbone
        bars = drawn[name].split('class="barlayer', 1)[1].split('class="infolayer"', 1)[0]
        assert bars.count('class="point"') == 3 * 2 * 2, name
    # the rung figure names its rung and trial count in the drawn panel titles
    assert "A: 24 trials reached epoch 2" in drawn["importance-epoch-2"]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    subprocess.run(
        [
            _chromium(),
            *CHROME_FLAGS,
            f"--user-data-dir={tmp_path / 'p2'}",
            "--window-size=1400,4200",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 50_000


def test_png_export_with_the_system_chromium(tmp_path, capsys, caplog):
    _chromium()
    run = fabricate_run(tmp_path)
    caplog.set_level("INFO", logger="analysis")
    assert report_main([str(run), "--out", str(tmp_path / "out"), "--png"]) == 0
    pngs = sorted(p.name for p in (tmp_path / "out" / "png").iterdir())
    assert pngs == sorted(f"{name}.png" for name in FIGURES)
    # a line per image while they are drawn (seconds each), then where they went
    said = [r.getMessage() for r in caplog.records if r.name == "analysis.report"]
    assert said[0].startswith(f"PNG 1 of {len(FIGURES)}: ") and len(said) == len(FIGURES)
    assert f"PNGs: {len(FIGURES)} in {tmp_path / 'out' / 'png'}" in capsys.readouterr().out
    assert not math.isnan(load_run(run).trials["best_val_mAP"].iloc[0])


def test_analysis_needs_neither_ray_nor_the_trainer(tmp_path):
    run = fabricate_run(tmp_path)
    code = f"""
import sys
sys.modules["ray"] = None  # importing Ray would fail
from analysis.report import write_all
write_all([{str(run)!r}], {str(tmp_path / "out")!r})
loaded = [m for m in ("torch", "open_clip", "accelerate", "handreid.train", "handreid.models",
                      "search") if m in sys.modules]
assert not loaded, loaded
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
