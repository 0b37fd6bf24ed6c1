"""Plotting steps: each takes the output of a pure step and returns a plotly figure."""

from __future__ import annotations

import optuna
import pandas as pd
import plotly.graph_objects as go
from optuna.trial import TrialState
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from analysis.load import RunData

COLORS = {"fANOVA": "#1f77b4", "PED-ANOVA": "#ff7f0e"}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]


def backbone_colours(data: RunData) -> dict[str, str]:
    return {
        b: PALETTE[i % len(PALETTE)] for i, b in enumerate(sorted(data.trials.backbone.unique()))
    }


def importance_figure(table: pd.DataFrame, title: str, counted: str) -> go.Figure:
    """Bars of importance per parameter, one panel per backbone, both evaluators; each
    panel's title names its trial count (``counted`` says what was counted)."""
    backbones = list(dict.fromkeys(table["backbone"]))
    titles = [
        f"{b}: {int(table[table.backbone == b]['n_trials'].iloc[0])} {counted}" for b in backbones
    ]
    fig = make_subplots(rows=1, cols=max(1, len(backbones)), subplot_titles=titles or None)
    for col, backbone in enumerate(backbones, start=1):
        part = table[table["backbone"] == backbone]
        for evaluator, group in part.groupby("evaluator", sort=False):
            group = group.sort_values("importance")
            fig.add_trace(
                go.Bar(
                    x=group["importance"],
                    y=group["parameter"],
                    orientation="h",
                    name=evaluator,
                    marker_color=COLORS.get(evaluator),
                    legendgroup=evaluator,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="importance (share of 1)", row=1, col=col)
    fig.update_layout(title=title, barmode="group", height=420)
    return fig


def backbone_progress(data: RunData) -> pd.DataFrame:
    """Per backbone, in trial start order: cumulative training time and the best value so
    far (failed trials add their time but no value)."""
    rows = []
    for backbone, group in data.trials.groupby("backbone", sort=True):
        best = None
        spent = 0.0
        for row in group.itertuples():  # data.trials is in start order
            spent += float(row.compute_seconds or 0.0)
            value = getattr(row, data.best_column)
            usable = row.status != "failed" and pd.notna(value)
            if usable and (best is None or (value > best if data.mode == "max" else value < best)):
                best = value
            rows.append(
                {
                    "backbone": backbone,
                    "trial_id": row.trial_id,
                    "status": row.status,
                    "cumulative_compute_s": spent,
                    "value": value if usable else None,
                    "best_so_far": best,
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "backbone",
            "trial_id",
            "status",
            "cumulative_compute_s",
            "value",
            "best_so_far",
        ],
    )


def progress_figure(data: RunData, progress: pd.DataFrame) -> go.Figure:
    """Best-so-far validation metric of each backbone against the training time spent on it;
    a star marks each backbone's winner."""
    minutes = progress["cumulative_compute_s"].max() > 300
    scale, unit = (60.0, "min") if minutes else (1.0, "s")
    colours = backbone_colours(data)
    fig = go.Figure()
    for backbone, part in progress.groupby("backbone", sort=True):
        x = part["cumulative_compute_s"] / scale
        colour = colours[backbone]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=part["best_so_far"],
                mode="lines",
                line={"shape": "hv", "color": colour, "width": 3},
                name=f"{backbone}: best so far ({len(part)} trials)",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=part["value"],
                mode="markers",
                marker={"color": colour, "size": 7, "opacity": 0.45},
                name=f"{backbone}: each trial",
                hovertext=part["trial_id"] + " (" + part["status"] + ")",
            )
        )
        if part["value"].notna().any():
            win = part.loc[part["value"].idxmax() if data.mode == "max" else part["value"].idxmin()]
            fig.add_trace(
                go.Scatter(
                    x=[win["cumulative_compute_s"] / scale],
                    y=[win["value"]],
                    mode="markers+text",
                    marker={
                        "symbol": "star",
                        "size": 16,
                        "color": colour,
                        "line": {"color": "black", "width": 1},
                    },
                    text=[f"best {backbone}: {win['value']:.2f}%"],
                    textposition="top center",
                    showlegend=False,
                    hovertext=win["trial_id"],
                )
            )
    fig.update_layout(
        title=f"Backbones: best validation {data.metric} so far against training time spent",
        xaxis_title=f"cumulative training time of the backbone's trials ({unit})",
        yaxis_title=f"best validation {data.metric} (%)",
        height=450,
    )
    return fig


def learning_curves_figure(data: RunData) -> go.Figure:
    """Validation metric by epoch per trial (start order); an x marks where ASHA stopped a
    pruned trial, dotted lines the rungs."""
    fig = go.Figure()
    colours = backbone_colours(data)
    curves = data.curves.groupby("trial_id")
    for row in data.trials.itertuples():
        if row.trial_id not in curves.groups:
            continue
        curve = curves.get_group(row.trial_id).sort_values("epoch")
        colour = colours[row.backbone]
        fig.add_trace(
            go.Scatter(
                x=curve["epoch"],
                y=curve[data.metric],
                mode="lines",
                name=f"{row.trial_id} ({row.backbone})",
                line={"color": colour, "width": 1.5},
                opacity=0.8,
                legendgroup=row.backbone,
            )
        )
        if row.status == "pruned":
            last = curve.iloc[-1]
            fig.add_trace(
                go.Scatter(
                    x=[last["epoch"]],
                    y=[last[data.metric]],
                    mode="markers",
                    showlegend=False,
                    marker={"symbol": "x", "size": 10, "color": colour},
                    hovertext=f"{row.trial_id} pruned at epoch {int(last['epoch'])}",
                )
            )
    for rung in data.rungs:
        fig.add_vline(x=rung, line_dash="dot", line_color="#888", annotation_text=f"rung {rung}")
    fig.update_layout(
        title=f"Learning curves: validation {data.metric} by epoch (x = pruned by ASHA)",
        xaxis_title="epoch",
        yaxis_title=f"validation {data.metric} (%)",
        height=450,
    )
    return fig


def backbone_figure(data: RunData) -> go.Figure:
    """Distribution of the best validation metric per backbone (failed trials left out)."""
    usable = data.trials[data.trials["status"] != "failed"]
    fig = go.Figure()
    for backbone, group in usable.groupby("backbone"):
        fig.add_trace(
            go.Box(
                y=group[data.best_column],
                name=f"{backbone} (n={len(group)})",
                boxpoints="all",
                jitter=0.4,
                pointpos=0,
                hovertext=group["trial_id"] + " " + group["status"],
            )
        )
    fig.update_layout(
        title=f"Backbones: best validation {data.metric} of each trial (pruned ones included)",
        height=420,
        yaxis_title=f"best validation {data.metric} (%)",
        showlegend=False,
    )
    return fig


def history_figure(study: optuna.Study, metric: str) -> go.Figure:
    fig = optuna.visualization.plot_optimization_history(study)
    fig.update_layout(
        height=420,
        title=f"Optimisation history (complete trials; best validation {metric})",
        xaxis_title="trial number (start order)",
        yaxis_title=f"best validation {metric} (%)",
    )
    return fig


WORDS = {"True": "yes", "False": "no", "None": "—"}


def parallel_figure(study: optuna.Study, title: str, target_name: str) -> go.Figure:
    """Optuna's parallel coordinates: one line trace per COMPLETE trial of ``study``, then a
    colour-bar trace; booleans read yes/no on the axes and in the hover text."""
    fig = optuna.visualization.plot_parallel_coordinate(study, target_name=target_name)
    for note in fig.layout.annotations:
        note.text = WORDS.get(note.text, note.text)
    # Optuna's pale end of "Blues" hides the weakest trials on white: recolour with Viridis
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    low, high = min(values, default=0.0), max(values, default=1.0)
    lines = [t for t in fig.data if t.mode == "lines" and t.customdata is not None]
    for trace, value in zip(lines, values):  # one line per trial, in trial order
        share = (value - low) / (high - low) if high > low else 1.0
        trace.line.color = sample_colorscale("Viridis", [share])[0]
        trace.line.width = 2.5
        trace.opacity = 0.9
        trace.customdata = [[label, WORDS.get(v, v)] for label, v in trace.customdata]
    for trace in fig.data:
        if trace.mode == "markers" and trace.marker.showscale:
            trace.marker.colorscale = "Viridis"
            trace.marker.reversescale = False
    fig.update_layout(height=450, title=title)
    return fig


def trial_lines(fig: go.Figure) -> int:
    """The number of trial lines in a ``parallel_figure``."""
    return sum(1 for t in fig.data if t.mode == "lines" and t.customdata is not None)
