"""Write the ranked comparison (CSV, Markdown, HTML) and one self-contained HTML report."""

from __future__ import annotations

import html
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import plotly.offline

from analysis.confirm import (
    Confirmation,
    confirmed_table,
    load_confirmations,
    verdicts,
    winner_lines,
)
from analysis.importance import importance_table, rung_importance_table
from analysis.load import SYNTHETIC, TRIAL_TIME, RunData, load_runs
from analysis.rank import (
    TABLE_CSS,
    comparison_table,
    export,
    ranked_table,
    reference_table,
    side_by_side,
    to_html,
    to_markdown,
)
from analysis.sections import (
    Figure,
    Inputs,
    build_figures,
    confirmation_section,
    readable_confirmed,
    with_ties,
)
from analysis.winners import TIE_COLUMNS, chosen_winners, marks, tie_lines, ties

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
    pngs: list[Path] = field(default_factory=list)


def write_all(
    run_dirs: list[str | Path], out: str | Path, *, top: int | None = None, png: bool = False
) -> ReportResult:
    data = load_runs(run_dirs)
    conf = load_confirmations(run_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = ReportResult(out)
    chosen = chosen_winners(data, conf)
    tied = ties(conf, chosen) if conf is not None else pd.DataFrame(columns=TIE_COLUMNS)
    tables = Tables(
        ranked=ranked_table(data, top, marks(chosen, tied)),
        comparison=comparison_table(data, conf),
        references=None if data.data.comparable else reference_table(),
        sides=side_by_side(data, conf),
    )
    importance, notes = importance_table(data)
    rungs, rung_notes = rung_importance_table(data)
    result.notes += notes + rung_notes
    result.files += write_tables(data, tables, out)
    if conf is not None:
        result.files += write_confirmation(conf, tied, out)
    importance.to_csv(out / "importance.csv", index=False)
    rungs.to_csv(out / "importance_rungs.csv", index=False)
    result.files += [out / "importance.csv", out / "importance_rungs.csv"]
    figs = build_figures(Inputs(data, chosen, importance, notes, rungs, rung_notes))
    if conf is not None:
        section = confirmation_section(conf, chosen, tied)
        figs = {"confirmation": section, **figs}
        section.winners = figs["progress"].winners
    page = out / "report.html"
    page.write_text(render_page(data, figs, tables))
    result.files.append(page)
    if png:
        result.notes += write_pngs(figs, out / "png", result)
    return result


@dataclass
class Tables:
    ranked: pd.DataFrame
    comparison: pd.DataFrame
    references: pd.DataFrame | None  # apart from ours: not real 11k on the standard protocol
    sides: pd.DataFrame


def write_tables(data: RunData, tables: Tables, out: Path) -> list[Path]:
    files = export(tables.ranked, out / "ranked", "All trials ranked by validation " + data.metric)
    title = "Each backbone's winner" + (
        " vs reference results" if tables.references is None else f" ({_data_words(data)})"
    )
    files += export(tables.comparison, out / "comparison", title)
    if tables.references is not None:
        with (out / "comparison.md").open("a") as f:
            f.write(f"\n## {REFERENCE_TITLE}\n\n{_reference_note(data)}\n\n")
            f.write(to_markdown(tables.references))
    files += export(tables.sides, out / "side_by_side", "Each backbone's winner, side by side")
    return files


REFERENCE_TITLE = "Reference results on real 11k Hands (a separate table)"


def _data_words(data: RunData) -> str:
    if data.data.synthetic:
        return "SYNTHETIC data: generated hands, not 11k Hands"
    return f"data: {data.data.description}"


def _reference_note(data: RunData) -> str:
    if data.data.synthetic:
        why = "this run trained on synthetic hands"
    elif data.data.synthetic is False:
        why = "this run's real data is not the references' protocol (see its data line)"
    else:
        why = "this run does not record what data it trained on"
    return (
        f"Not comparable with the table above: {why}. These are results on real 11k Hands "
        "dorsal_r (docs/METHOD.md); the seed's manual runs were chosen on test data, one "
        "unseeded run each."
    )


def write_confirmation(conf: Confirmation, tied, out: Path) -> list[Path]:
    """confirmed.csv (machine names) and the Confirmation section of comparison.md."""
    with_ties(confirmed_table(conf), tied).to_csv(out / "confirmed.csv", index=False)
    lines = [v.text for v in verdicts(conf)] + winner_lines(conf) + tie_lines(tied)
    with (out / "comparison.md").open("a") as f:
        f.write("\n## Confirmation\n\n" + "".join(f"{line}\n\n" for line in lines))
        f.write(to_markdown(readable_confirmed(conf, tied)))
    return [out / "confirmed.csv"]


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


def render_page(data: RunData, figs: dict[str, Figure], tables: Tables) -> str:
    said = figs["progress"].winners if "progress" in figs else ""
    sections = [("Ranked comparison", _comparison_html(data, tables, said))]
    sections += [(f.title, _figure_html(name, f)) for name, f in figs.items()]
    sections.append(("All trials, ranked", _winners_html(said) + to_html(tables.ranked)))
    body = "\n".join(f"<section><h2>{html.escape(t)}</h2>\n{c}</section>" for t, c in sections)
    status = _status_line(data, "confirmation" in figs)
    title = "handreid-search report" + (": SYNTHETIC DATA" if data.data.synthetic else "")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{TABLE_CSS}{PAGE_CSS}</style><script type='text/javascript'>"
        f"{plotly.offline.get_plotlyjs()}</script></head><body><h1>{title}</h1>"
        f"{_data_banner(data)}<p>{status}</p>\n{body}</body></html>"
    )


PAGE_CSS = (
    " .note{color:#555;font-size:13px} section{margin-bottom:2em} .winners{font-weight:bold}"
    " .synthetic{background:#fff3cd;border:2px solid #c90;padding:8px 12px;font-size:15px}"
)


def _data_banner(data: RunData) -> str:
    if data.data.synthetic:
        return (
            "<p class='synthetic' id='synthetic'><b>SYNTHETIC DATA.</b> Every trial trained "
            f"and was scored on {html.escape(SYNTHETIC)}: no number in this report is "
            "comparable with results on real 11k Hands.</p>"
        )
    return f"<p>Data: {html.escape(data.data.description)}.</p>"


def _comparison_html(data: RunData, tables: Tables, said: str) -> str:
    parts = [_winners_html(said), to_html(tables.comparison)]
    parts.append(
        "<p class='note'>The seed's manual runs were chosen on test data, one unseeded run "
        f"each. {html.escape(TRIAL_TIME)}; all_trials_seconds sums them over the backbone.</p>"
        if tables.references is None
        else f"<h3>{REFERENCE_TITLE}</h3><p class='note'>"
        f"{html.escape(_reference_note(data))}</p>" + to_html(tables.references)
        + f"<p class='note'>{html.escape(TRIAL_TIME)}.</p>"
    )  # fmt: skip
    parts.append(to_html(tables.sides, "Each backbone's winner, side by side"))
    return "".join(parts)


def _winners_html(said: str) -> str:
    return f"<p class='winners'>{html.escape(said)}</p>" if said else ""


def _figure_html(name: str, figure: Figure) -> str:
    parts = [_winners_html(figure.winners)]
    parts += [figure.html] if figure.html else []
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
    """Static images through kaleido and the system Chromium, one log line per image (each
    takes seconds); a note when there is no Chromium."""
    import os

    browser = os.environ.get("BROWSER_PATH") or find_chromium()
    if not browser:
        return [f"no PNG written: {CHROMIUM_HINT}"]
    os.environ.setdefault("BROWSER_PATH", browser)
    for name in ("choreographer", "kaleido", "logistro"):
        logging.getLogger(name).setLevel(logging.WARNING)
    folder.mkdir(parents=True, exist_ok=True)
    drawn = [(name, f.fig) for name, f in figs.items() if f.fig is not None]
    for i, (name, fig) in enumerate(drawn, start=1):
        path = folder / f"{name}.png"
        log.info("PNG %d of %d: %s", i, len(drawn), path)
        try:
            fig.write_image(path, width=1200, height=fig.layout.height or 450)
        except Exception as err:  # kaleido/Chromium failures must not lose the HTML
            return [f"no PNG for {name}: {type(err).__name__}: {err}; {CHROMIUM_HINT}"]
        result.files.append(path)
        result.pngs.append(path)
    return []
