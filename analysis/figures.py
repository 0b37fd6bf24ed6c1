"""Plotting steps: each takes the output of a pure step and returns a plotly figure."""

from __future__ import annotations

import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.load import RunData

COLORS = {"fANOVA": "#1f77b4", "PED-ANOVA": "#ff7f0e"}


def importance_figure(table: pd.DataFrame) -> go.Figure:
    """Bars of importance per parameter, one panel per backbone, both evaluators."""
    backbones = list(dict.fromkeys(table["backbone"]))
    titles = [
        f"{b} ({int(table[table.backbone == b]['n_trials'].iloc[0])} complete trials)"
        for b in backbones
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
    fig.update_layout(
        title="Parameter importance (normalised; COMPLETE trials only)", barmode="group", height=420
    )
    return fig


def learning_curves_figure(data: RunData) -> go.Figure:
    """Validation metric by epoch per trial; an x marks where ASHA stopped a pruned trial."""
    fig = go.Figure()
    status = dict(zip(data.trials["trial_id"], data.trials["status"]))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]
    colours = {
        b: palette[i % len(palette)] for i, b in enumerate(sorted(data.trials.backbone.unique()))
    }
    for trial_id, curve in data.curves.groupby("trial_id", sort=False):
        curve = curve.sort_values("epoch")
        backbone = curve["backbone"].iloc[0]
        fig.add_trace(
            go.Scatter(
                x=curve["epoch"],
                y=curve[data.metric],
                mode="lines",
                name=f"{trial_id} ({backbone})",
                line={"color": colours[backbone], "width": 1.5},
                opacity=0.8,
                legendgroup=backbone,
            )
        )
        if status.get(trial_id) == "pruned":
            last = curve.iloc[-1]
            fig.add_trace(
                go.Scatter(
                    x=[last["epoch"]],
                    y=[last[data.metric]],
                    mode="markers",
                    showlegend=False,
                    marker={"symbol": "x", "size": 10, "color": colours[backbone]},
                    hovertext=f"{trial_id} pruned at epoch {int(last['epoch'])}",
                )
            )
    fig.update_layout(
        title=f"Learning curves: {data.metric} by epoch (x = pruned by ASHA)",
        xaxis_title="epoch",
        yaxis_title=data.metric,
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
        title=f"Backbones: best {data.metric} per trial",
        height=420,
        yaxis_title=data.best_column,
        showlegend=False,
    )
    return fig


def history_figure(study: optuna.Study) -> go.Figure:
    fig = optuna.visualization.plot_optimization_history(study)
    fig.update_layout(height=420)
    return fig


def parallel_figure(study: optuna.Study) -> go.Figure:
    fig = optuna.visualization.plot_parallel_coordinate(study)
    fig.update_layout(height=450)
    return fig
