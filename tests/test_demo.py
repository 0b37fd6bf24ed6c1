"""`make demo` as a user runs it: the shipped demo space, end to end, then its report drawn in
headless Chromium. The pretrained tiny CLIPs are built on first use (shared per session)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.test_analysis import CHROME_FLAGS, _chromium

pytestmark = pytest.mark.slow


def test_the_demo_searches_learns_and_reports_both_backbones(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "search.cli",
            "--space",
            str(REPO / "spaces" / "demo.yml"),
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            "demo",
        ],
        capture_output=True,
        text=True,
        timeout=1800,  # 4-6 min alone; make test runs it beside the other xdist worker
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "demo"
    trials = pd.read_csv(run_dir / "trials.csv")
    table = trials[trials["role"] == "search"]
    assert len(table) >= 24 and set(table["backbone"]) == {"tiny-vit", "tiny-rn"}
    assert (table["status"] == "pruned").any()
    for backbone, part in table.groupby("backbone"):
        # tune.balance: 12 trials each; ASHA's one rung at epoch 4 with reduction factor 3
        # lets about a third go on, more early in the search (6-7 of 12 with tune.seed 0;
        # 2-9, median 5, in 30 replayed searches of 24 trials, BENCHMARKS.md); the demo
        # issue asks for at least 3, and confirmation needs 2
        assert len(part) == 12, backbone
        assert (part["status"] == "complete").sum() >= 3, backbone

    # confirmation: each backbone's best 2 configurations with 2 more seeds; the winner
    # (best mean over its 3 seeds) trained with 2 fresh seeds, only those scored on test,
    # and the verdict from those scores
    confirm = pd.read_csv(run_dir / "confirm.csv")
    assert sorted(confirm.groupby("backbone").size()) == [2, 2]
    assert (confirm["runs"] == 3).all() and confirm["winner"].sum() == 2
    runs = trials[trials["role"] == "confirm"]
    assert len(runs) == 8 and set(runs["config_id"]) == set(confirm["config_id"])
    for backbone in ("tiny-vit", "tiny-rn"):
        best = json.loads((run_dir / "best" / backbone / "test_metrics.json").read_text())
        assert best["confirmed"] and best["scored_on"] == "fresh seeds"
        assert len(best["seeds"]) == 2 and len(best["selection"]) == 3
        assert all(len(seed["per_split"]) == 10 for seed in best["seeds"])
    scoring = trials[trials["role"] == "score"]
    assert len(scoring) == 4 and set(scoring["config_id"]) == set(
        confirm.loc[confirm["winner"], "config_id"]
    )
    assert set(trials.dropna(subset=["test_mAP"])["role"]) == {"score"}

    # the terminal: one line per trial and per confirmation run, the best complete trial per
    # backbone, the verdict, and where the data, the run and the report are; none of Ray's
    # per-trial status tables
    lines = out.stdout.splitlines()
    assert sum(line.startswith("trial ") for line in lines) == len(table)
    assert sum(line.startswith("confirm ") for line in lines) == len(runs)
    assert sum(line.startswith("score ") for line in lines) == len(scoring)
    assert "Trial status" not in out.stdout and "Trial status" not in out.stderr
    assert "Token authentication is enabled" not in out.stderr  # Ray's note at every start
    assert any(
        (" is better than " in line or " not distinguishable " in line) and "95% CI" in line
        for line in lines
    ), out.stdout[-2000:]
    for place in ("data:", "run directory:", "report:", "dashboard:"):
        assert any(line.startswith(place) for line in lines), place
    # every path the terminal names is the run's storage, the clone or the cache it was
    # given (make demo: runs/ and .cache/ in the clone): nothing outside them
    given = (str(tmp_path), str(REPO), os.environ.get("HANDREID_CACHE", str(REPO)))
    top = r"/(?:tmp|root|home|work|var|opt|usr|mnt|srv|data)/[\w./-]*"
    named = re.findall(top, out.stdout + "\n" + out.stderr)
    assert named and [p for p in named if not p.startswith(given)] == []
    study = json.loads((run_dir / "search.json").read_text())
    assert study["num_samples"] == len(table)

    dom = subprocess.run(
        [
            _chromium(),
            *CHROME_FLAGS,
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--dump-dom",
            (run_dir / "report" / "report.html").resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    sections = {
        chunk.split('"', 1)[0]: chunk.split("</section>", 1)[0]
        for chunk in dom.split('id="fig-')[1:]
    }
    importance = [name for name in sections if name.startswith("importance")]
    assert "importance" in importance and len(importance) >= 2, list(sections)
    for name in importance:  # bars drawn, for both backbones
        body = sections[name]
        assert 'class="main-svg"' in body, name
        bars = body.split('class="barlayer', 1)[1].split('class="infolayer"', 1)[0]
        assert bars.count('class="point"') >= 2, name
        assert "tiny-vit" in body and "tiny-rn" in body, name
    # a parallel-coordinates plot per backbone, together at least 8 lines
    assert any(n.startswith("confirmation") for n in sections), list(sections)
    parallel = [sections[n] for n in sections if n.startswith("parallel")]
    assert len(parallel) == 2
    assert sum(body.count('class="js-line"') for body in parallel) >= 8
