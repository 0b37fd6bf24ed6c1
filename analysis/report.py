"""Write the ranked comparison (CSV, Markdown, HTML) and one self-contained HTML report."""

from __future__ import annotations

import html
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import plotly.offline

from analysis import figures
from analysis.confirm import (
    Confirmation,
    confirmed_table,
    display_names,
    load_confirmations,
    verdicts,
    winner_lines,
)
from analysis.importance import (
    importance_table,
    rebuild_study,
    rung_importance_table,
    rung_study,
)
from analysis.load import RunData, load_runs
from analysis.rank import (
    TABLE_CSS,
    comparison_table,
    export,
    ranked_table,
    side_by_side,
    to_html,
    to_markdown,
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


@dataclass
class Figure:
    """One report section: a figure with its heading, a one-line caption and notes."""

    title: str
    fig: object | None
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    html: str = ""  # shown before the figure (e.g. a table)


def build_figures(data: RunData, importance, notes, rungs, rung_notes) -> dict[str, Figure]:
    figs = {
        "progress": Figure(
            "Backbones compared",
            figures.progress_figure(data, figures.backbone_progress(data)),
            "Each line is the best validation score a backbone had reached after that much "
            "training time on its trials (in start order); dots are single trials, the star "
            "each backbone's winner. Higher and further left is better.",
        )
    }
    figs["importance"] = Figure(
        "Parameter importance over complete trials",
        figures.importance_figure(
            importance,
            f"Parameter importance by best validation {data.metric} (complete trials only)",
            "complete trials",
        )
        if len(importance)
        else None,
        "fANOVA and PED-ANOVA, normalised to sum to 1 per backbone and evaluator.",
        notes,
    )
    for epoch in data.rungs:
        part = rungs[rungs["rung"] == epoch]
        figs[f"importance-epoch-{epoch}"] = Figure(
            f"Parameter importance at ASHA rung epoch {epoch}",
            figures.importance_figure(
                part,
                f"Parameter importance by validation {data.metric} at epoch {epoch}: "
                "every trial that reached it, pruned ones included",
                f"trials reached epoch {epoch}",
            )
            if len(part)
            else None,
            f"Rung at epoch {epoch} ({data.rungs_from}); the value is {data.metric} at "
            f"epoch {epoch}, the trial's own result there.",
            [n for n in rung_notes if f" at epoch {epoch}:" in n],
        )
    figs.update(parallel_figures(data))
    figs["history"] = Figure(
        "Optimisation history",
        figures.history_figure(rebuild_study(data, by_key=False), data.metric),
        "Trials numbered in the order they started; pruned and failed trials have no value.",
    )
    figs["curves"] = Figure(
        "Learning curves", figures.learning_curves_figure(data), "Trials in start order."
    )
    figs["backbones"] = Figure("Best value per trial", figures.backbone_figure(data))
    return figs


def parallel_figures(data: RunData) -> dict[str, Figure]:
    """One parallel-coordinates figure per backbone: every trial that reached the last rung
    (or every trial with a value, when there are no rungs), by its value there."""
    last = data.rungs[-1] if data.rungs else 1
    out = {}
    for i, backbone in enumerate(sorted(data.trials["backbone"].unique())):
        study = rung_study(data, backbone, last)
        n = len(study.trials)
        target = f"{data.metric} at epoch {last} (%)"
        title = f"{backbone}: {_trials(n)} reached epoch {last} (the last rung)"
        out[f"parallel-{i}"] = Figure(
            f"Parallel coordinates: {backbone}",
            figures.parallel_figure(study, title, target) if n else None,
            f"One line per trial that reached epoch {last}, coloured by {target}.",
            [] if n else [f"{backbone}: no trial reached epoch {last}"],
        )
    return out


def write_all(
    run_dirs: list[str | Path], out: str | Path, *, top: int | None = None, png: bool = False
) -> ReportResult:
    data = load_runs(run_dirs)
    conf = load_confirmations(run_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = ReportResult(out)
    ranked = ranked_table(data, top)
    comparison = comparison_table(data, conf)
    sides = side_by_side(data)
    importance, notes = importance_table(data)
    rungs, rung_notes = rung_importance_table(data)
    result.notes += notes + rung_notes
    result.files += export(ranked, out / "ranked", "All trials ranked by validation " + data.metric)
    result.files += export(comparison, out / "comparison", "Best per backbone vs reference results")
    if conf is not None:
        result.files += write_confirmation(conf, out)
    result.files += export(sides, out / "side_by_side", "Best configuration per backbone")
    importance.to_csv(out / "importance.csv", index=False)
    rungs.to_csv(out / "importance_rungs.csv", index=False)
    result.files += [out / "importance.csv", out / "importance_rungs.csv"]
    figs = build_figures(data, importance, notes, rungs, rung_notes)
    if conf is not None:
        figs = {"confirmation": confirmation_section(conf), **figs}
    page = out / "report.html"
    page.write_text(render_page(data, figs, ranked, comparison, sides))
    result.files.append(page)
    if png:
        result.notes += write_pngs(figs, out / "png", result)
    return result


def confirmation_text(conf: Confirmation) -> tuple[list[str], list[str]]:
    """The verdict sentences, and one line per backbone on single-seed vs confirmed winner."""
    return [v.text for v in verdicts(conf)], winner_lines(conf)


def readable_confirmed(conf: Confirmation):
    return confirmed_table(conf).rename(columns=display_names(conf.metric))


def write_confirmation(conf: Confirmation, out: Path) -> list[Path]:
    """confirmed.csv (machine names) and the Confirmation section of comparison.md."""
    confirmed_table(conf).to_csv(out / "confirmed.csv", index=False)
    said, winners = confirmation_text(conf)
    with (out / "comparison.md").open("a") as f:
        f.write("\n## Confirmation\n\n" + "".join(f"{line}\n\n" for line in said + winners))
        f.write(to_markdown(readable_confirmed(conf)))
    return [out / "confirmed.csv"]


def confirmation_section(conf: Confirmation) -> Figure:
    said, winners = confirmation_text(conf)
    text = "".join(f"<p class='verdict'><b>{html.escape(line)}</b></p>" for line in said)
    text += "".join(f"<p>{html.escape(line)}</p>" for line in winners)
    return Figure(
        "Confirmation",
        figures.confirmation_figure(conf),
        "The top configurations of each backbone retrained with more training seeds (same "
        "identity split); the winner per backbone is the best mean validation score. The "
        "winner is then trained with fresh seeds, and only those runs are scored on the test "
        "protocol: the seeds that chose it would inflate its test score. The verdict's "
        "interval is a t interval with a variance part for each backbone's scoring seeds "
        "and one for the query/gallery splits (shared by the backbones, so their common "
        "effect cancels), and one fewer degrees of freedom than the fewer seeds; below 2 "
        "scoring seeds of a backbone it states no verdict.",
        html=text + to_html(readable_confirmed(conf)),
    )


def _status_line(data: RunData, confirmed: bool) -> str:
    counts = data.trials["status"].value_counts().to_dict()
    state = "finished" if data.finished else "in progress (finished trials only)"
    parts = ", ".join(f"{n} {s}" for s, n in counts.items())
    if confirmed:
        scored = (
            "for fresh training seeds of each backbone's confirmed winner, seeds that took no "
            "part in choosing it (neither the search run nor the confirmation runs, which "
            "count on validation only), and the verdict is computed from those scores alone."
        )
    else:
        scored = "for the top trials per backbone, after the search."
        if data.finished:
            scored += " No confirmation stage: each test score is from one training seed."
    return (
        f"Runs: {', '.join(map(html.escape, data.runs))}. Objective: validation "
        f"{html.escape(data.metric)} ({data.mode}). {len(data.trials)} trials ({parts}); "
        f"search {state}. Test metrics (mean ± std over 10 query/gallery splits) are "
        f"computed only {scored}"
    )


def render_page(data, figs: dict[str, Figure], ranked, comparison, sides) -> str:
    sections = [
        (
            "Ranked comparison",
            to_html(comparison) + "<p class='note'>Reference rows come from "
            "METHOD.md; the seed's manual runs were chosen on test data, one unseeded run each. "
            "compute_seconds is one trial's training time; total_compute_s sums every trial "
            "of the backbone.</p>"
            + to_html(sides, "Best configuration per backbone, side by side"),
        ),
    ]
    sections += [(f.title, _figure_html(name, f)) for name, f in figs.items()]
    sections.append(("All trials, ranked", to_html(ranked)))
    body = "\n".join(f"<section><h2>{html.escape(t)}</h2>\n{c}</section>" for t, c in sections)
    status = _status_line(data, "confirmation" in figs)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>handreid-search report</title>"
        f"<style>{TABLE_CSS} .note{{color:#555;font-size:13px}} section{{margin-bottom:2em}}"
        f"</style><script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
        f"</head><body><h1>handreid-search report</h1><p>{status}</p>\n{body}"
        "</body></html>"
    )


def _trials(n: int) -> str:
    return f"{n} trial" if n == 1 else f"{n} trials"


def _figure_html(name: str, figure: Figure) -> str:
    parts = [figure.html] if figure.html else []
    if figure.fig is not None:
        div = figure.fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"fig-{name}",
            config={"displaylogo": False},
        )
        parts.append(f"<div class='figure'>{div}</div>")
    if figure.caption:
        parts.append(f"<p class='caption'>{html.escape(figure.caption)}</p>")
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in figure.notes]
    return "".join(parts)


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
    for name, figure in figs.items():
        if figure.fig is None:
            continue
        fig, path = figure.fig, folder / f"{name}.png"
        try:
            fig.write_image(path, width=1200, height=fig.layout.height or 450)
            result.files.append(path)
        except Exception as err:  # kaleido/Chromium failures must not lose the HTML
            notes.append(f"no PNG for {name}: {type(err).__name__}: {err}; {CHROMIUM_HINT}")
            break
    return notes
