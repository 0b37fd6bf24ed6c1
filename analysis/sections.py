"""The report's figure sections: each a figure with its heading, caption, notes and the line
naming the winners it marks (``analysis.winners``: the confirmed winner once there is one)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd

from analysis import figures
from analysis.confirm import Confirmation, confirmed_table, display_names, verdicts, winner_lines
from analysis.importance import rebuild_study, rung_study
from analysis.load import TRIAL_TIME, RunData
from analysis.rank import to_html
from analysis.winners import Chosen, tie_lines, winners_sentence


@dataclass
class Figure:
    """One report section: a figure with its heading, a one-line caption and notes."""

    title: str
    fig: object | None
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    html: str = ""  # shown before the figure (e.g. a table)
    winners: str = ""  # the sentence naming the winners this section marks


@dataclass
class Inputs:
    """What the sections are drawn from."""

    data: RunData
    chosen: dict[str, Chosen]
    importance: pd.DataFrame
    notes: list[str]
    rungs: pd.DataFrame
    rung_notes: list[str]


def build_figures(inputs: Inputs) -> dict[str, Figure]:
    data, chosen = inputs.data, inputs.chosen
    figs = {"progress": progress_section(data, chosen)}
    figs.update(importance_sections(inputs))
    figs.update(parallel_figures(data, chosen))
    figs["history"] = history_section(data, chosen)
    figs["curves"] = Figure(
        "Learning curves",
        figures.learning_curves_figure(data, chosen),
        "Trials in start order; hover over a line for its trial id.",
    )
    figs["backbones"] = Figure("Best value per trial", figures.backbone_figure(data, chosen))
    said = winners_sentence(chosen)
    for fig in figs.values():
        fig.winners = fig.winners or said
    return figs


def progress_section(data: RunData, chosen: dict[str, Chosen]) -> Figure:
    return Figure(
        "Backbones compared",
        figures.progress_figure(data, figures.backbone_progress(data), chosen),
        "Each line is the best validation score a backbone had reached after that much trial "
        "time on its trials (in start order); dots are single trials, the star each "
        "backbone's winner at its search run. Higher and further left is better. "
        f"{TRIAL_TIME}.",
    )


def importance_sections(inputs: Inputs) -> dict[str, Figure]:
    data = inputs.data
    settings = winner_settings(data, inputs.chosen, inputs.importance)
    figs = {
        "importance": Figure(
            "Parameter importance over complete trials",
            _importance(
                inputs.importance,
                f"by best validation {data.metric} (complete trials only)",
                "complete trials",
            ),  # fmt: skip
            "fANOVA and PED-ANOVA, normalised to sum to 1 per backbone and evaluator.",
            inputs.notes,
            winners=settings,
        )
    }
    for epoch in data.rungs:
        part = inputs.rungs[inputs.rungs["rung"] == epoch]
        figs[f"importance-epoch-{epoch}"] = Figure(
            f"Parameter importance at the ASHA rung at epoch {epoch}",
            _importance(part, f"by validation {data.metric} at epoch {epoch}: every trial "
                        "that reached it, pruned ones included", f"trials reached epoch {epoch}"),
            f"Rung at epoch {epoch} ({data.rungs_from}), where ASHA compared trials; the value "
            f"is {data.metric} at epoch {epoch}, the trial's own result there. The last epoch "
            "is no rung (a trial there has finished): complete trials have their own chart.",
            [n for n in inputs.rung_notes if f" at epoch {epoch}:" in n],
            winners=settings,
        )  # fmt: skip
    return figs


def _importance(table: pd.DataFrame, what: str, counted: str):
    if not len(table):
        return None
    return figures.importance_figure(table, f"Parameter importance {what}", counted)


def winner_settings(data: RunData, chosen: dict[str, Chosen], importance: pd.DataFrame) -> str:
    """The winners, and each one's values of its backbone's two most important parameters."""
    parts = []
    trials = data.trials.set_index("trial_id")
    for backbone, c in chosen.items():
        top = importance[importance["backbone"] == backbone]
        top = top.groupby("parameter")["importance"].mean().sort_values(ascending=False)
        values = [
            f"{p} = {_value(trials.loc[c.config_id].get(p))}"
            for p in top.index[:2]
            if c.config_id in trials.index
        ]
        parts.append(f"{c.label}" + (f" ({', '.join(values)})" if values else ""))
    return (
        winners_sentence(chosen)
        + " Their settings of the top parameters: "
        + "; ".join(parts)
        + "."
    )


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def parallel_figures(data: RunData, chosen: dict[str, Chosen]) -> dict[str, Figure]:
    """One parallel-coordinates figure per backbone: every trial that reached the last rung
    (or every trial with a value, when there are no rungs), by its value there."""
    last = data.rungs[-1] if data.rungs else 1
    out = {}
    for i, backbone in enumerate(sorted(data.trials["backbone"].unique())):
        study = rung_study(data, backbone, last)
        n = len(study.trials)
        target = f"{data.metric} at epoch {last} (%)"
        title = f"{backbone}: {_trials(n)} reached epoch {last} (the last rung)"
        winner = chosen[backbone].config_id if backbone in chosen else None
        out[f"parallel-{i}"] = Figure(
            f"Parallel coordinates: {backbone}",
            figures.parallel_figure(study, title, target, winner) if n else None,
            f"One line per trial that reached epoch {last}, coloured by {target}; the thick "
            "black line is the winner.",
            [] if n else [f"{backbone}: no trial reached epoch {last}"],
        )
    return out


def history_section(data: RunData, chosen: dict[str, Chosen]) -> Figure:
    backbones = sorted(data.trials["backbone"].unique())
    studies = {b: rebuild_study(data, backbone=b, by_key=False) for b in backbones}
    return Figure(
        "Optimisation history",
        figures.history_figure(studies, data.metric, chosen, figures.backbone_colours(data)),
        "One history per backbone: each backbone is tuned from its own trials, so each has "
        "its own trial numbers and best-so-far line; pruned and failed trials have no value.",
    )


def _trials(n: int) -> str:
    return f"{n} trial" if n == 1 else f"{n} trials"


# ------------------------------------------------------------------ confirmation


def confirmation_section(conf: Confirmation, chosen: dict[str, Chosen], tied) -> Figure:
    said = [v.text for v in verdicts(conf)]
    text = "".join(f"<p class='verdict'><b>{html.escape(line)}</b></p>" for line in said)
    lines = winner_lines(conf) + tie_lines(tied)
    text += "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    return Figure(
        "Confirmation",
        figures.confirmation_figure(conf, chosen, tied),
        "The top configurations of each backbone retrained with more training seeds (same "
        "identity split); the winner per backbone is the best mean validation score, and a "
        "configuration whose difference from it is within seed noise (its 95% interval holds "
        "0) is marked tied. The winner is then trained with fresh seeds, and only those runs "
        "are scored on the test protocol: the seeds that chose it would inflate its test "
        "score. The verdict's interval is a t interval with a variance part for each "
        "backbone's scoring seeds and one for the query/gallery splits (shared by the "
        "backbones, so their common effect cancels); below 2 scoring seeds of a backbone it "
        "states no verdict.",
        html=text + to_html(readable_confirmed(conf, tied)),
    )


def readable_confirmed(conf: Confirmation, tied) -> pd.DataFrame:
    """The confirmed table with readable headers and a ``tied`` column."""
    table = with_ties(confirmed_table(conf), tied)
    names = {**display_names(conf.metric), "tied": "tied with the winner (95% CI holds 0)"}
    return table.rename(columns=names)


def with_ties(table: pd.DataFrame, tied) -> pd.DataFrame:
    """``tied`` per row: yes/no against the winner; the winner itself none."""
    key = dict(zip(zip(tied["backbone"], tied["config_id"]), tied["tied"]))
    table = table.copy()
    table.insert(
        table.columns.get_loc("winner") + 1,
        "tied",
        [key.get((b, str(c))) for b, c in zip(table["backbone"], table["config_id"])],
    )
    return table
