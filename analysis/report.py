"""Write the ranked comparison (CSV, Markdown, HTML) and one self-contained HTML report."""

from __future__ import annotations

import html
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import plotly.offline

from analysis import figures
from analysis.importance import importance_table, rebuild_study
from analysis.load import RunData, load_runs
from analysis.rank import (
    TABLE_CSS,
    comparison_table,
    export,
    ranked_table,
    side_by_side,
    to_html,
)

log = logging.getLogger(__name__)

CHROMIUM_HINT = (
    "static images need a Chromium: apt-get install chromium "
    "(or set BROWSER_PATH to a Chrome/Chromium binary)"
)


@dataclass
class ReportResult:
    out: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build_figures(data: RunData, importance) -> dict[str, object]:
    study = rebuild_study(data, by_key=False)
    figs = {}
    if len(importance):
        figs["importance"] = figures.importance_figure(importance)
    figs["parallel"] = figures.parallel_figure(study)
    figs["history"] = figures.history_figure(study)
    figs["curves"] = figures.learning_curves_figure(data)
    figs["backbones"] = figures.backbone_figure(data)
    return figs


def write_all(
    run_dirs: list[str | Path], out: str | Path, *, top: int | None = None, png: bool = False
) -> ReportResult:
    data = load_runs(run_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = ReportResult(out)
    ranked = ranked_table(data, top)
    comparison = comparison_table(data)
    sides = side_by_side(data)
    importance, notes = importance_table(data)
    result.notes += notes
    result.files += export(ranked, out / "ranked", "All trials ranked by validation " + data.metric)
    result.files += export(comparison, out / "comparison", "Best per backbone vs reference results")
    result.files += export(sides, out / "side_by_side", "Best configuration per backbone")
    importance.to_csv(out / "importance.csv", index=False)
    result.files.append(out / "importance.csv")
    figs = build_figures(data, importance)
    page = out / "report.html"
    page.write_text(render_page(data, figs, ranked, comparison, sides, notes))
    result.files.append(page)
    if png:
        result.notes += write_pngs(figs, out / "png", result)
    return result


def _status_line(data: RunData) -> str:
    counts = data.trials["status"].value_counts().to_dict()
    state = "finished" if data.finished else "in progress (finished trials only)"
    parts = ", ".join(f"{n} {s}" for s, n in counts.items())
    return (
        f"Runs: {', '.join(map(html.escape, data.runs))}. Objective: validation "
        f"{html.escape(data.metric)} ({data.mode}). {len(data.trials)} trials ({parts}); "
        f"search {state}. Test metrics (mean ± std over 10 query/gallery splits) are "
        f"computed only for the top trials per backbone, after the search."
    )


def render_page(data, figs, ranked, comparison, sides, notes) -> str:
    sections = [
        (
            "Ranked comparison",
            to_html(comparison) + "<p class='note'>Reference rows come from "
            "METHOD.md; the seed's manual runs were chosen on test data, one unseeded run each."
            "</p>" + to_html(sides, "Best configuration per backbone, side by side"),
        ),
    ]
    captions = {
        "importance": "Parameter importance per backbone (fANOVA and PED-ANOVA)",
        "parallel": "Parallel coordinates (complete trials)",
        "history": "Optimisation history",
        "curves": "Learning curves",
        "backbones": "Backbone comparison",
    }
    for name, fig in figs.items():
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"fig-{name}",
            config={"displaylogo": False},
        )
        extra = (
            "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)
            if (name == "importance")
            else ""
        )
        sections.append((captions[name], f"<div class='figure'>{div}</div>{extra}"))
    if "importance" not in figs:
        sections.insert(
            1,
            (
                "Parameter importance",
                "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes) or "<p>none</p>",
            ),
        )
    sections.append(("All trials, ranked", to_html(ranked)))
    body = "\n".join(f"<section><h2>{t}</h2>\n{c}</section>" for t, c in sections)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>handreid-search report</title>"
        f"<style>{TABLE_CSS} .note{{color:#555;font-size:13px}} section{{margin-bottom:2em}}"
        f"</style><script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
        f"</head><body><h1>handreid-search report</h1><p>{_status_line(data)}</p>\n{body}"
        "</body></html>"
    )


def find_chromium() -> str | None:
    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )


def write_pngs(figs: dict, folder: Path, result: ReportResult) -> list[str]:
    """Static images through kaleido and the system Chromium; a note when there is none."""
    import os

    browser = os.environ.get("BROWSER_PATH") or find_chromium()
    if not browser:
        return [f"no PNG written: {CHROMIUM_HINT}"]
    os.environ.setdefault("BROWSER_PATH", browser)
    for name in ("choreographer", "kaleido", "logistro"):
        logging.getLogger(name).setLevel(logging.WARNING)
    folder.mkdir(parents=True, exist_ok=True)
    notes = []
    for name, fig in figs.items():
        path = folder / f"{name}.png"
        try:
            fig.write_image(path, width=1200, height=fig.layout.height or 450)
            result.files.append(path)
        except Exception as err:  # kaleido/Chromium failures must not lose the HTML
            notes.append(f"no PNG for {name}: {type(err).__name__}: {err}; {CHROMIUM_HINT}")
            break
    return notes
