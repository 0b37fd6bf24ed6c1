"""A report that cannot be misread: synthetic data said in the title and the comparison,
references apart from it, one winner (the confirmed, scored one) in every section, ties within
noise marked, history per backbone, and the page as Chromium draws it at 1400 px."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest

from analysis import figures
from analysis.confirm import load_confirmation
from analysis.load import load_run
from analysis.rank import comparison_table, ranked_table, side_by_side
from analysis.report import write_all
from analysis.sections import history_section
from analysis.winners import best_per_backbone, chosen_winners, marks, ties
from tests.test_analysis import (
    CHROME_FLAGS,
    REAL_DATA,
    SYNTHETIC_DATA,
    _chromium,
    fabricate_run,
)
from tests.test_verdict import fabricate_confirmed_run


def scored_ids(run) -> dict[str, str]:
    """Backbone -> the configuration its scoring seeds scored (test_metrics.json)."""
    return {
        b: json.loads((run / "best" / b / "test_metrics.json").read_text())["config_id"]
        for b in ("A", "B")
    }


def test_a_synthetic_run_says_so_and_keeps_the_references_apart(tmp_path):
    run = fabricate_run(tmp_path, "synth", n_per_backbone=8, data=SYNTHETIC_DATA)
    data = load_run(run)
    assert data.data.synthetic is True
    comparison = comparison_table(data)
    assert "reference" not in comparison and len(comparison) == 2
    assert set(comparison["data"]) == {"SYNTHETIC (generated hands)"}
    write_all([run], tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<title>handreid-search report: SYNTHETIC DATA</title>" in page
    assert "<h1>handreid-search report: SYNTHETIC DATA</h1>" in page
    ours, refs = page.split("Reference results on real 11k Hands (a separate table)", 1)
    assert "MBA-Net" not in ours and "MBA-Net" in refs
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert md.startswith("# Each backbone's winner (SYNTHETIC data")
    head, apart = md.split("## Reference results on real 11k Hands", 1)
    assert "88.18" not in head and "88.18" in apart and "Not comparable" in apart


def test_a_real_data_run_shows_the_references_beside_it(tmp_path):
    data = load_run(fabricate_run(tmp_path))  # fabricate_run's default: real images
    assert data.data.synthetic is False and "/data/11k-256, dorsal_r" in data.data.description
    comparison = comparison_table(data)
    assert comparison["reference"].tolist() == [False] * 2 + [True] * 5
    write_all([fabricate_run(tmp_path, "again")], tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "SYNTHETIC" not in page and "a separate table" not in page


@pytest.mark.parametrize(
    "change, why",
    [
        ({"split": "random"}, "random split"),
        ({"subset": True}, "a subset: missing images left out"),
        ({"aspect": "palmar_l"}, "aspect palmar_l"),
    ],
)
def test_real_data_off_the_standard_protocol_keeps_the_references_apart(tmp_path, change, why):
    """A random split, a partial copy or another aspect is real data, but not the protocol
    of the reference results: they go to their own table, and the data line says why."""
    run = fabricate_run(tmp_path, data={**REAL_DATA, **change})
    data = load_run(run)
    assert data.data.synthetic is False and not data.data.comparable
    assert f"NOT the standard protocol ({why})" in data.data.description
    assert "reference" not in comparison_table(data)
    write_all([run], tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    ours, refs = page.split("Reference results on real 11k Hands (a separate table)", 1)
    assert "MBA-Net" not in ours and "MBA-Net" in refs and "NOT the standard protocol" in ours
    assert "SYNTHETIC" not in page


def test_a_run_without_a_data_record_reads_its_config_or_stays_unknown(tmp_path):
    run = fabricate_run(tmp_path)
    meta = json.loads((run / "search.json").read_text())
    del meta["data"]
    (run / "search.json").write_text(json.dumps(meta))
    assert load_run(run).data.synthetic is None  # no config.yaml to tell: references apart
    assert "reference" not in comparison_table(load_run(run))
    (run / "best" / "A").mkdir(parents=True)
    (run / "best" / "A" / "config.yaml").write_text("data:\n  root: null\n  prepared: null\n")
    assert load_run(run).data.synthetic is True


def test_every_table_uses_the_confirmed_winner_not_the_best_single_run(tmp_path):
    run = fabricate_confirmed_run(tmp_path)  # A's confirmed winner is its second config
    data, conf = load_run(run), load_confirmation(run)
    single = best_per_backbone(data).set_index("backbone")["trial_id"]
    scored = scored_ids(run)
    assert scored["A"] != single["A"] and scored["B"] == single["B"]
    chosen = chosen_winners(data, conf)
    assert {b: c.config_id for b, c in chosen.items()} == scored
    assert all(c.confirmed and c.scoring_seeds == 3 for c in chosen.values())
    comparison = comparison_table(data, conf)
    assert comparison["system"].str.contains(f"A: confirmed winner {scored['A']}").sum() == 1
    assert not comparison["system"].str.contains(single["A"]).any()
    sides = side_by_side(data, conf).set_index("parameter")
    assert sides.loc["winner", "A"] == scored["A"]
    winner_row = conf.configs[conf.configs["config_id"] == scored["A"]].iloc[0]
    assert sides.loc["best_val_mAP", "A"] == winner_row["val_mean"]
    ranked = ranked_table(data, marks=marks(chosen)).set_index("trial_id")
    assert ranked.loc[scored["A"], "winner"] == "★ confirmed winner"
    assert pd.isna(ranked.loc[single["A"], "winner"])
    star = [t for t in figures.progress_figure(data, figures.backbone_progress(data), chosen).data
            if t.marker.symbol == "star"]  # fmt: skip
    assert [t.name for t in star] == [f"★ winner A {scored['A']}", f"★ winner B {scored['B']}"]


def test_the_winner_is_what_the_scoring_seeds_scored(tmp_path):
    """An extended confirmation that now ranks another configuration first, before its fresh
    seeds ran: every section keeps the scored configuration."""
    run = fabricate_confirmed_run(tmp_path)
    scored = scored_ids(run)
    table = pd.read_csv(run / "confirm.csv", dtype={"config_id": str})
    a = table["backbone"] == "A"
    table.loc[a, "winner"] = table.loc[a, "config_id"] != scored["A"]  # another one flagged
    table.to_csv(run / "confirm.csv", index=False)
    chosen = chosen_winners(load_run(run), load_confirmation(run))
    assert chosen["A"].config_id == scored["A"]


def confirmation_with(values: dict[str, list[float]]):
    """Backbone A's confirmed configurations with these validation values per seed (the
    first is the search run); the first configuration is the winner."""
    from tests.test_verdict import confirmation, winner

    conf = confirmation({"A": winner("A", np.full((2, 10), 80.0))})
    conf.configs = pd.DataFrame(
        [{"backbone": "A", "config_id": c, "winner": i == 0, "val_mean": np.mean(v)}
         for i, (c, v) in enumerate(values.items())]
    )  # fmt: skip
    conf.seed_values = pd.DataFrame(
        [["A", c, f"{c}s{k}", "search" if k == 0 else "confirm", k, x]
         for c, v in values.items() for k, x in enumerate(v)]
        + [["A", "win", "score1", "score", 1001, -100.0]],  # a scoring seed: ignored
        columns=["backbone", "config_id", "trial_id", "role", "train_seed", "value"],
    )  # fmt: skip
    return conf


def test_configurations_within_seed_noise_of_the_winner_are_tied():
    conf = confirmation_with(
        {"win": [27.9, 27.5, 28.0], "near": [27.7, 27.9, 27.6], "far": [20.0, 20.2, 19.9],
         "above": [35.0, 35.2, 34.9]}  # clearly above the scored winner: no tie either
    )  # fmt: skip
    chosen = {"A": chosen_winners.__globals__["Chosen"]("A", "win", True, 2)}
    table = ties(conf, chosen).set_index("config_id")
    assert table.loc["near", "tied"] and not table.loc["far", "tied"]
    assert not table.loc["above", "tied"]
    assert table.loc["near", "df"] == 2  # one fewer than the 3 runs of each
    assert table.loc["far", "difference"] == np.mean([27.9, 27.5, 28.0]) - np.mean(
        [20.0, 20.2, 19.9]
    )
    assert marks(chosen, ties(conf, chosen)) == {
        "win": "★ confirmed winner",
        "near": "tied with win",
    }
    one = confirmation_with({"win": [27.9, 27.5], "lone": [27.0]})
    assert ties(one, chosen).set_index("config_id").loc["lone", "tied"] is None


def test_history_is_drawn_per_backbone(tmp_path):
    data = load_run(fabricate_run(tmp_path))
    chosen = chosen_winners(data, None)
    fig = history_section(data, chosen).fig
    best = [t.name for t in fig.data if t.mode == "lines"]
    assert best == ["best so far of A", "best so far of B"]
    for backbone in "AB":  # each line is its own trials' running best
        (line,) = [t for t in fig.data if t.name == f"best so far of {backbone}"]
        values = data.trials[data.trials.backbone == backbone]
        assert len(line.y) == len(values)  # one point per trial of its own, numbered 0..n-1
        assert max(line.y) == values[values.status == "complete"]["best_val_mAP"].max()
        assert [n for n in fig.data if n.name == f"each trial of {backbone}"]
    assert [t.name for t in fig.data if t.marker.symbol == "star"] == [
        f"★ winner {c.label}" for c in chosen.values()
    ]


# ------------------------------------------------------------------ drawn in Chromium

LAYOUT_PROBE = """<script>
window.addEventListener('load', () => {
  const out = [];
  document.querySelectorAll('div.scroll').forEach((box) => {
    const first = box.querySelector('tbody td'), heads = box.querySelectorAll('th');
    const before = first.getBoundingClientRect().left;
    box.scrollLeft = box.scrollWidth;
    out.push({box: box.getBoundingClientRect().right, page: window.innerWidth,
              wide: box.scrollWidth > box.clientWidth, sticky: getComputedStyle(first).position,
              first_moved: first.getBoundingClientRect().left - before,
              last: heads[heads.length - 1].getBoundingClientRect().right,
              last_name: heads[heads.length - 1].textContent});
  });
  const pre = document.createElement('pre');
  pre.id = 'layout';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _dom(page, tmp_path, name: str) -> str:
    return subprocess.run(
        [_chromium(), *CHROME_FLAGS, f"--user-data-dir={tmp_path / name}",
         "--window-size=1400,900", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip


def _text(fragment: str) -> str:
    return re.sub(r"<[^>]+>", " ", fragment)


def test_the_drawn_report_names_the_winner_everywhere_and_labels_the_confirmation(tmp_path):
    run = fabricate_confirmed_run(tmp_path, data=SYNTHETIC_DATA)
    write_all([run], tmp_path / "out")
    page = tmp_path / "out" / "report.html"
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    dom = _dom(probe, tmp_path, "chromium")
    head = dom.split("<section>", 1)[0]
    assert "SYNTHETIC DATA" in head.split("</h1>", 1)[0] and 'id="synthetic"' in head
    sections = [s.split("</section>", 1)[0] for s in dom.split("<section>")[1:]]
    assert len(sections) >= 10
    scored = scored_ids(run)
    for section in sections:
        title = re.search(r"<h2>(.*?)</h2>", section).group(1)
        for backbone, config in scored.items():
            assert f"{backbone} {config}" in _text(section), (title, backbone)
    said = _text(next(s for s in sections if "<h2>Confirmation</h2>" in s))
    assert "(2 degrees of freedom, one fewer than the smaller seed count: " in said  # why
    comparison = _text(sections[0])
    assert comparison.count("SYNTHETIC (generated hands)") == 2
    assert "main-svg" in dom.split('id="fig-confirmation"', 1)[1]
    confirmation = dom.split('id="fig-confirmation"', 1)[1].split("</section>", 1)[0]
    ticks = re.findall(r'class="x2?tick"[^>]*>.*?<text[^>]*>(.*?)</text>', confirmation)
    backbone_of = pd.read_csv(run / "confirm.csv", dtype={"config_id": str})
    backbone_of = dict(zip(backbone_of["config_id"], backbone_of["backbone"]))
    assert len(ticks) == 6 + 2  # each confirmed configuration, then each winner
    for tick in ticks:
        backbone, config = tick.split(" ")[:2]
        assert backbone_of[config] == backbone, tick  # the configuration's own backbone
    assert sum("★" in t for t in ticks) == 4  # each winner, left and right
    legend = _text(confirmation.split('class="legend"', 1)[1])
    assert "the search's own run of the configuration" in legend
    assert "a fresh scoring seed" in legend
    layout = json.loads(re.search(r'<pre id="layout">(.*?)</pre>', dom).group(1))
    assert any(box["wide"] for box in layout)  # the ranked table is wider than the page
    for box in layout:
        assert box["box"] <= box["page"] and box["sticky"] == "sticky"
        if box["wide"]:  # scrolled to its end: the last column in view, the first kept
            assert box["last"] <= box["page"] and abs(box["first_moved"]) < 1, box
