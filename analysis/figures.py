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
from analysis.winners import Chosen

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
    """Per backbone, in trial start order: cumulative trial time (``trial_seconds``) and the
    best value so far (failed trials add their time but no value)."""
    rows = []
    for backbone, group in data.trials.groupby("backbone", sort=True):
        best = None
        spent = 0.0
        for row in group.itertuples():  # data.trials is in start order
            spent += float(row.trial_seconds or 0.0)
            value = getattr(row, data.best_column)
            usable = row.status != "failed" and pd.notna(value)
            if usable and (best is None or (value > best if data.mode == "max" else value < best)):
                best = value
            rows.append(
                {
                    "backbone": backbone,
                    "trial_id": row.trial_id,
                    "status": row.status,
                    "cumulative_seconds": spent,
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
            "cumulative_seconds",
            "value",
            "best_so_far",
        ],
    )


def progress_figure(data: RunData, progress: pd.DataFrame, chosen: dict[str, Chosen]) -> go.Figure:
    """Best-so-far validation metric of each backbone against the time spent on its trials;
    a star marks each backbone's winner (``analysis.winners``) at its search run."""
    minutes = progress["cumulative_seconds"].max() > 300
    scale, unit = (60.0, "min") if minutes else (1.0, "s")
    colours = backbone_colours(data)
    fig = go.Figure()
    for backbone, part in progress.groupby("backbone", sort=True):
        x = part["cumulative_seconds"] / scale
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
        win = part[part["trial_id"] == chosen[backbone].config_id] if backbone in chosen else []
        if len(win) and pd.notna(win["value"].iloc[0]):
            _star(fig, win["cumulative_seconds"].iloc[0] / scale, win["value"].iloc[0], colour,
                  f"★ winner {chosen[backbone].label}")  # fmt: skip
    fig.update_layout(
        title=f"Backbones: best validation {data.metric} so far against trial time spent",
        xaxis_title=f"cumulative trial time of the backbone's trials ({unit})",
        yaxis_title=f"best validation {data.metric} (%)",
        height=450,
    )
    return fig


def _star(fig: go.Figure, x, y, colour: str, name: str, **where) -> None:
    """A winner's star, in the legend under ``name``."""
    fig.add_trace(
        go.Scatter(
            x=[x],
            y=[y],
            mode="markers",
            marker={
                "symbol": "star",
                "size": 16,
                "color": colour,
                "line": {"color": "black", "width": 1},
            },
            name=name,
            hovertext=[name],
        ),  # fmt: skip
        **where,
    )


def learning_curves_figure(data: RunData, chosen: dict[str, Chosen]) -> go.Figure:
    """Validation metric by epoch per trial (start order); an x marks where ASHA stopped a
    pruned trial, dotted lines the rungs, a thick line each backbone's winner. The legend has
    one entry per backbone and one per winner (a trial's id is in its hover text)."""
    fig = go.Figure()
    colours = backbone_colours(data)
    winners = {c.config_id: c for c in chosen.values()}
    curves = data.curves.groupby("trial_id")
    for backbone in sorted(data.trials["backbone"].unique()):
        _legend_line(fig, f"{backbone}: one line per trial", colours[backbone])
    for row in data.trials.itertuples():
        if row.trial_id not in curves.groups:
            continue
        curve = curves.get_group(row.trial_id).sort_values("epoch")
        _curve(fig, data, row, curve, colours[row.backbone], winners.get(row.trial_id))
    for rung in data.rungs:
        fig.add_vline(x=rung, line_dash="dot", line_color="#888", annotation_text=f"rung {rung}")
    fig.update_layout(
        title=f"Learning curves: validation {data.metric} by epoch (x = pruned by ASHA)",
        xaxis_title="epoch",
        yaxis_title=f"validation {data.metric} (%)",
        height=450,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def _legend_line(fig: go.Figure, name: str, colour: str) -> None:
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=name, line={"color": colour}))


def _curve(fig: go.Figure, data: RunData, row, curve, colour: str, winner) -> None:
    """One trial's curve (named by its trial id), and its x where ASHA pruned it."""
    fig.add_trace(
        go.Scatter(
            x=curve["epoch"],
            y=curve[data.metric],
            mode="lines",
            name=row.trial_id,
            showlegend=winner is not None,
            line={"color": colour, "width": 4 if winner else 1.5},
            opacity=1.0 if winner else 0.6,
            hovertemplate=f"{row.trial_id} ({row.backbone}): epoch %{{x}}, %{{y:.2f}}%"
            "<extra></extra>",
        )
    )
    if winner is not None:
        fig.data[-1].name = f"★ winner {winner.label}"
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


def backbone_figure(data: RunData, chosen: dict[str, Chosen]) -> go.Figure:
    """Distribution of the best validation metric per backbone (failed trials left out); a
    star at each backbone's winner."""
    usable = data.trials[data.trials["status"] != "failed"]
    colours = backbone_colours(data)
    fig = go.Figure()
    for backbone, group in usable.groupby("backbone"):
        name = f"{backbone} (n={len(group)})"
        fig.add_trace(
            go.Box(
                y=group[data.best_column],
                name=name,
                boxpoints="all",
                jitter=0.4,
                pointpos=0,
                marker_color=colours[backbone],
                hovertext=group["trial_id"] + " " + group["status"],
                showlegend=False,
            )
        )
        win = group[group["trial_id"] == chosen[backbone].config_id] if backbone in chosen else []
        if len(win):
            label = f"★ winner {chosen[backbone].label}"
            _star(fig, name, win[data.best_column].iloc[0], colours[backbone], label)
    fig.update_layout(
        title=f"Backbones: best validation {data.metric} of each trial (pruned ones included)",
        height=420,
        yaxis_title=f"best validation {data.metric} (%)",
    )
    return fig


def history_figure(
    studies: dict[str, optuna.Study], metric: str, chosen: dict[str, Chosen], colours
) -> go.Figure:
    """Optuna's optimisation history of each backbone's own study (its trials numbered in
    its start order, its own best-so-far line), a star at each winner's search run."""
    fig = optuna.visualization.plot_optimization_history(list(studies.values()))
    fig.data = [t for t in fig.data if len(t.x or ())]  # no empty "Infeasible Trial" traces
    for trace in fig.data:
        backbone = trace.name.rsplit(" of ", 1)[-1]
        trace.marker.color = trace.line.color = colours.get(backbone)
        trace.name = trace.name.replace("Objective Value", "each trial").replace(
            "Best Value", "best so far"
        )
    for backbone, study in studies.items():
        number = _trial_number(study, chosen.get(backbone))
        if number is not None:
            trial = study.trials[number]
            _star(fig, number, trial.value, colours.get(backbone),
                  f"★ winner {chosen[backbone].label}")  # fmt: skip
    fig.update_layout(
        height=420,
        title=f"Optimisation history per backbone (complete trials; best validation {metric})",
        xaxis_title="trial number within the backbone (its start order)",
        yaxis_title=f"best validation {metric} (%)",
    )
    return fig


def _trial_number(study: optuna.Study, chosen: Chosen | None) -> int | None:
    if chosen is None:
        return None
    for t in study.trials:
        if t.user_attrs.get("trial_id") == chosen.config_id and t.value is not None:
            return t.number
    return None


WORDS = {"True": "yes", "False": "no", "None": "—"}


def parallel_figure(
    study: optuna.Study, title: str, target_name: str, winner: str | None = None
) -> go.Figure:
    """Optuna's parallel coordinates: one line trace per COMPLETE trial of ``study``, then a
    colour-bar trace; booleans read yes/no on the axes and in the hover text. The trial
    ``winner`` (its id) is drawn last, thick and black."""
    fig = optuna.visualization.plot_parallel_coordinate(study, target_name=target_name)
    for note in fig.layout.annotations:
        note.text = WORDS.get(note.text, note.text)
    # Optuna's pale end of "Blues" hides the weakest trials on white: recolour with Viridis
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    values = [t.value for t in complete]
    low, high = min(values, default=0.0), max(values, default=1.0)
    lines = [t for t in fig.data if t.mode == "lines" and t.customdata is not None]
    for trace, trial in zip(lines, complete):  # one line per trial, in trial order
        share = (trial.value - low) / (high - low) if high > low else 1.0
        trace.line.color = sample_colorscale("Viridis", [share])[0]
        trace.line.width = 2.5
        trace.opacity = 0.9
        trace.customdata = [[label, WORDS.get(v, v)] for label, v in trace.customdata]
        if winner is not None and trial.user_attrs.get("trial_id") == winner:
            trace.line.color, trace.line.width, trace.opacity = "black", 6, 1.0
            trace.name, trace.showlegend = f"★ winner {winner}", True
    others = [t for t in fig.data if not t.showlegend]
    fig.data = others + [t for t in fig.data if t.showlegend]  # the winner on top
    for trace in fig.data:
        if trace.mode == "markers" and trace.marker.showscale:
            trace.marker.colorscale = "Viridis"
            trace.marker.reversescale = False
    fig.update_layout(height=450, title=title, legend={"orientation": "h", "y": -0.15})
    return fig


def trial_lines(fig: go.Figure) -> int:
    """The number of trial lines in a ``parallel_figure``."""
    return sum(1 for t in fig.data if t.mode == "lines" and t.customdata is not None)


def confirmation_figure(
    conf: Confirmation, chosen: dict[str, Chosen] | None = None, tied: pd.DataFrame | None = None
) -> go.Figure:
    """Left: each confirmed configuration's validation value per training seed (diamond:
    the search's own run), its mean as a bar; the winner's label starred, a configuration
    tied with it so marked. Right: each backbone winner's test mAP per fresh scoring seed
    (mean over splits, whiskers: std over splits) and the mean over seeds x splits. Each x
    label names the configuration's own backbone; the legend explains the symbols."""
    colours = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(sorted(conf.backbones))}
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.68, 0.32],
        subplot_titles=(
            f"validation {conf.metric} per seed, each confirmed configuration",
            "test mAP per fresh scoring seed, each backbone's winner",
        ),
    )
    labels = _confirmed_labels(conf, chosen, tied)
    for r in conf.configs.to_dict("records"):
        _config_seeds(fig, conf, r, labels[(r["backbone"], str(r["config_id"]))], colours)
    for backbone in conf.backbones:
        _winner_scores(fig, conf.winners.get(backbone), colours[backbone])
    fig.update_xaxes(categoryorder="array", categoryarray=list(labels.values()), row=1, col=1)
    fig.update_yaxes(title_text=f"validation {conf.metric} (%)", row=1, col=1)
    fig.update_yaxes(title_text="test mAP, mean over splits (%)", row=1, col=2)
    _symbol_legend(fig, colours)
    fig.update_layout(
        title="Confirmation: each dot one training seed, the bar the mean",
        height=500,
        legend={"orientation": "h", "y": -0.3},
        margin={"b": 150},
    )
    return fig


def _confirmed_labels(conf: Confirmation, chosen, tied) -> dict[tuple[str, str], str]:
    """(backbone, config) -> its x label: the backbone, the configuration, ★ or (tied)."""
    winners = {b: c.config_id for b, c in (chosen or {}).items()}
    even = set()
    if tied is not None and len(tied):
        even = {(r.backbone, r.config_id) for r in tied.itertuples() if r.tied is True}
    out = {}
    for r in conf.configs.to_dict("records"):
        key = (r["backbone"], str(r["config_id"]))
        won = winners.get(key[0], None) == key[1] if winners else bool(r["winner"])
        mark = " ★" if won else (" (tied)" if key in even else "")
        out[key] = f"{key[0]} {key[1]}{mark}"
    return out


def _config_seeds(fig, conf: Confirmation, r: dict, label: str, colours) -> None:
    backbone, config = r["backbone"], str(r["config_id"])
    v = conf.seed_values
    seeds = v[(v["backbone"] == backbone) & (v["config_id"].astype(str) == config)]
    seeds = seeds[seeds["role"] != "score"]  # the scoring seeds chose nothing
    symbols = ["diamond" if role == "search" else "circle" for role in seeds["role"]]
    _seed_dots(fig, [label] * len(seeds), seeds["value"], colours[backbone], 1, symbols)
    fig.data[-1].hovertext = [
        f"{backbone} {config}: trial {t}, train seed {s if pd.notna(s) else '?'} ({role or 'seed'})"
        for t, s, role in zip(seeds["trial_id"], seeds["train_seed"], seeds["role"])
    ]
    _mean_bar(fig, label, r.get("val_mean"), colours[backbone], 1)


def _winner_scores(fig, w, colour: str) -> None:
    if w is None or not w.seeds:
        return
    scores = w.scores("mAP")
    label = f"{w.backbone} {w.config_id} ★"
    _seed_dots(
        fig, [label] * len(scores), scores.mean(axis=1), colour, 2, ["circle-open"] * len(scores)
    )
    fig.data[-1].error_y = {"type": "data", "array": scores.std(axis=1), "thickness": 1}
    fig.data[-1].hovertext = [f"trial {s.trial_id}, train seed {s.train_seed}" for s in w.seeds]
    _mean_bar(fig, label, scores.mean(), colour, 2)


def _symbol_legend(fig: go.Figure, colours: dict[str, str]) -> None:
    """Legend entries (drawn nowhere) for the symbols and the backbones' colours."""
    grey = "#555"
    entries = [
        ("diamond", grey, "the search's own run of the configuration"),
        ("circle", grey, "a confirmation seed (these choose the winner, on validation only)"),
        ("line-ew-open", grey, "mean over the seeds"),
        ("circle-open", grey, "right: a fresh scoring seed (whiskers: std over splits)"),
    ]
    entries += [("square", c, f"colour: {b}") for b, c in colours.items()]
    for symbol, colour, name in entries:
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=name,
                marker={
                    "symbol": symbol,
                    "color": colour,
                    "size": 10,
                    "line": {"color": colour, "width": 2},
                },
            )  # fmt: skip
        )


def _seed_dots(fig, x, y, colour, col, symbols=None) -> None:
    fig.add_trace(
        go.Scatter(
            x=list(x),
            y=list(y),
            mode="markers",
            marker={"color": colour, "size": 9, "opacity": 0.7, "symbol": symbols or "circle"},
            showlegend=False,
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
            showlegend=False,
        ),
        row=1,
        col=col,
    )
