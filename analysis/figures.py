"""Plotting steps: each takes the output of a pure step and returns a plotly figure."""

from __future__ import annotations

import optuna
import pandas as pd
import plotly.graph_objects as go
from optuna.trial import TrialState
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from analysis.confirm import Confirmation
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


def confirmation_figure(conf: Confirmation) -> go.Figure:
    """Left: each confirmed configuration's validation value per training seed (diamond:
    the search's own run), its mean as a bar; the winner's label starred. Right: each
    backbone winner's test mAP per seed (mean over splits, whiskers: std over splits) and
    the mean over seeds x splits."""
    colours = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(sorted(conf.backbones))}
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.68, 0.32],
        subplot_titles=(
            f"validation {conf.metric} per seed, each confirmed configuration",
            "test mAP per seed, each backbone's winner",
        ),
    )
    for r in conf.configs.to_dict("records"):
        backbone, config = r["backbone"], r["config_id"]
        label = f"{backbone} {config}" + (" ★" if r["winner"] else "")
        seeds = conf.seed_values[
            (conf.seed_values["backbone"] == backbone) & (conf.seed_values["config_id"] == config)
        ]
        symbols = ["diamond" if role == "search" else "circle" for role in seeds["role"]]
        _seed_dots(fig, [label] * len(seeds), seeds["value"], colours[backbone], 1, symbols)
        fig.data[-1].hovertext = [
            f"trial {t}, train seed {s if pd.notna(s) else '?'} ({role or 'seed'})"
            for t, s, role in zip(seeds["trial_id"], seeds["train_seed"], seeds["role"])
        ]
        _mean_bar(fig, label, r.get("val_mean"), colours[backbone], 1)
    for backbone in conf.backbones:
        w = conf.winners.get(backbone)
        if w is None or not w.seeds:
            continue
        scores = w.scores("mAP")
        label = f"{backbone} {w.config_id}"
        _seed_dots(fig, [label] * len(scores), scores.mean(axis=1), colours[backbone], 2)
        fig.data[-1].error_y = {"type": "data", "array": scores.std(axis=1), "thickness": 1}
        fig.data[-1].hovertext = [f"trial {s.trial_id}, train seed {s.train_seed}" for s in w.seeds]
        _mean_bar(fig, label, scores.mean(), colours[backbone], 2)
    fig.update_yaxes(title_text=f"validation {conf.metric} (%)", row=1, col=1)
    fig.update_yaxes(title_text="test mAP, mean over splits (%)", row=1, col=2)
    fig.update_layout(
        title="Confirmation: each dot one training seed, the bar the mean",
        height=450,
        showlegend=False,
    )
    return fig


def _seed_dots(fig, x, y, colour, col, symbols=None) -> None:
    fig.add_trace(
        go.Scatter(
            x=list(x),
            y=list(y),
            mode="markers",
            marker={"color": colour, "size": 9, "opacity": 0.7, "symbol": symbols or "circle"},
        ),
        row=1,
        col=col,
    )


def _mean_bar(fig, label, mean, colour, col) -> None:
    if mean is None or pd.isna(mean):
        return
    fig.add_trace(
        go.Scatter(
            x=[label],
            y=[float(mean)],
            mode="markers",
            marker={
                "symbol": "line-ew-open",
                "size": 34,
                "color": colour,
                "line": {"color": colour, "width": 3},
            },
            hovertext=[f"mean {float(mean):.2f}%"],
        ),
        row=1,
        col=col,
    )
