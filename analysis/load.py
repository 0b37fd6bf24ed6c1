"""Read run directories written by ``handreid-search``: no Ray, no trainer.

A run directory holds ``search.json`` (metric, searched parameters and their
distributions), one ``trial_*/`` folder per trial with Tune's ``params.json`` and
``result.json`` (one JSON line per epoch), the Optuna study (``study.db``) and, once the
search has finished, ``trials.csv`` with the test metrics of the top trials. A search
still running is read as far as it has got.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from handreid.errors import HandReIDError

TEST_COLUMNS = ("rank1", "rank5", "rank10", "mAP")


class ReportError(HandReIDError):
    pass


@dataclass
class RunData:
    runs: list[str]
    metric: str
    mode: str
    params: list[str]  # dotted config keys that were searched
    distributions: dict[str, dict[str, Any]]  # Optuna parameter name -> spec
    trials: pd.DataFrame  # one row per trial, in start order
    curves: pd.DataFrame  # one row per trial and epoch
    finished: bool = False
    rungs: list[int] = field(default_factory=list)  # ASHA milestones (epochs)
    rungs_from: str = ""  # where the rungs were read from, in words
    notes: list[str] = field(default_factory=list)
    confirm_runs: int = 0  # trial folders of the confirmation stage, left out of ``trials``

    @property
    def best_column(self) -> str:
        return f"best_{self.metric}"


def config_key(name: str) -> str:
    return name.split(" (", 1)[0].split("|", 1)[0]  # "|": names before the current form


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: ignore it, keep the rest
            continue
    return rows


def _study_states(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Ray trial id -> Optuna state and user attributes, when the study exists."""
    db = run_dir / "study.db"
    if not db.is_file():
        return {}
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db.resolve()}"
    out = {}
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        if "derived_from" in study.user_attrs:  # a per-backbone copy for the dashboard
            continue
        for t in study.get_trials(deepcopy=False):
            if "ray_trial_id" in t.user_attrs:
                started = t.datetime_start.timestamp() if t.datetime_start else math.nan
                out[t.user_attrs["ray_trial_id"]] = {
                    "state": t.state.name,
                    "started": started,
                    **t.user_attrs,
                }
    return out


def asha_rungs(meta: dict[str, Any], pruned_at: list[int]) -> tuple[list[int], str]:
    """ASHA's milestones as Ray computes them (``grace_period * reduction_factor**k``) from
    the settings search.json records, else the epochs at which trials were pruned."""
    tune = meta.get("tune") or {}
    grace, factor = tune.get("grace_period"), tune.get("reduction_factor")
    max_t = meta.get("max_epochs") or tune.get("max_epochs")
    if isinstance(tune.get("rungs"), list) and tune["rungs"]:  # tune.scheduler.rungs
        return [int(r) for r in tune["rungs"]], "the space's rungs (search.json)"
    if all(isinstance(v, int) for v in (grace, factor, max_t)) and max_t >= grace >= 1:
        count = int(math.log(max_t / grace) / math.log(factor) + 1) if factor >= 2 else 0
        if count:
            return [grace * factor**k for k in range(count)], (
                f"ASHA grace period {grace}, reduction factor {factor}, "
                f"max {max_t} epochs (search.json)"
            )
    rungs = sorted({int(e) for e in pruned_at if e})
    return rungs, "the epochs at which trials were pruned" if rungs else "no rungs found"


def _status(rows: list[dict], study: dict[str, Any] | None, final: dict | None):
    """(status, detail) of one trial: complete, pruned, failed or running."""
    last = rows[-1] if rows else {}
    epoch = last.get("epoch", 0)
    if final is not None and isinstance(final.get("status"), str):
        status = final["status"]
        reason = final.get("fail_reason") if isinstance(final.get("fail_reason"), str) else None
    elif study is not None and study["state"] != "RUNNING":
        status = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(
            study["state"], "failed"
        )
        reason = study.get("fail_reason")
        if reason:  # a diverged trial is PRUNED in the study (for TPE), failed here
            status = "failed"
    else:
        status = {
            "done": "complete",
            "early_stopped": "complete",
            "diverged": "failed",
            "oom": "failed",
        }.get(last.get("status"), "running")
        reason = last.get("error") if status == "failed" else None
    if status == "pruned":
        return status, f"pruned at epoch {epoch}"
    if status == "failed":
        return status, f"failed: {reason or 'unknown'}"
    return status, status


def load_run(run_dir: str | Path) -> RunData:
    run_dir = Path(run_dir)
    meta_path = run_dir / "search.json"
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a folder")
    if not meta_path.is_file():
        raise ReportError(f"{run_dir}: not a run directory (no search.json from handreid-search)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{meta_path}: malformed JSON ({err.msg})") from None
    trial_dirs = sorted(p for p in run_dir.glob("trial_*") if p.is_dir())
    if not trial_dirs:
        raise ReportError(f"{run_dir}: empty run (no trials yet)")
    final, confirm_runs = read_trials_csv(run_dir / "trials.csv"), 0
    study = _study_states(run_dir)
    metric = meta["metric"]
    rows, curves = [], []
    for folder in trial_dirs:
        trial_id = folder.name.removeprefix("trial_")
        if role(final.get(trial_id)) != "search":  # a confirmation run: not a search trial
            confirm_runs += 1
            continue
        params_path = folder / "params.json"
        params = json.loads(params_path.read_text()) if params_path.is_file() else {}
        results = _one_per_epoch(_read_json_lines(folder / "result.json"))
        status, detail = _status(results, study.get(trial_id), final.get(trial_id))
        values = [r.get(metric) for r in results if _finite(r.get(metric))]
        best = (max if meta["mode"] == "max" else min)(values) if values else math.nan
        best_epoch = next((r["epoch"] for r in results if r.get(metric) == best), None)
        first = results[0].get("timestamp") if results else None
        started = (study.get(trial_id) or {}).get("started", math.nan)
        if not _finite(started) and _finite(first):
            started = first - (results[0].get("time_this_iter_s") or 0.0)
        row = {
            "run": meta.get("name", run_dir.name),
            "trial_id": trial_id,
            "backbone": params.get("model.backbone", meta.get("base_backbone", "?")),
            **{config_key(k): v for k, v in params.items() if config_key(k) != "model.backbone"},
            "status": status,
            "status_detail": detail,
            "epochs": max((r.get("epoch", 0) for r in results), default=0),
            f"best_{metric}": best,
            "best_epoch": best_epoch,
            "compute_seconds": sum(r.get("epoch_seconds", 0.0) for r in results),
            "optuna_params": params,
            "started": started if _finite(started) else math.nan,
        }
        row.update(_test_metrics(final.get(trial_id)))
        rows.append(row)
        curves += [
            {
                "run": row["run"],
                "trial_id": trial_id,
                "backbone": row["backbone"],
                "epoch": r.get("epoch"),
                metric: r.get(metric),
                "epoch_seconds": r.get("epoch_seconds"),
            }
            for r in results
        ]
    rungs, rungs_from = asha_rungs(meta, [r["epochs"] for r in rows if r["status"] == "pruned"])
    return RunData(
        runs=[row["run"] for row in rows[:1]],
        metric=metric,
        mode=meta["mode"],
        params=list(meta.get("params", [])),
        distributions=dict(meta.get("distributions", {})),
        trials=in_start_order(pd.DataFrame(rows)),
        curves=pd.DataFrame(
            curves, columns=["run", "trial_id", "backbone", "epoch", metric, "epoch_seconds"]
        ),
        finished=bool(final),
        rungs=rungs,
        rungs_from=rungs_from,
        confirm_runs=confirm_runs,
    )


def read_trials_csv(path: Path) -> dict[str, dict[str, Any]]:
    """trials.csv by trial id ({} before the wrap-up). Files from before the confirmation
    stage lack ``role``, ``config_id`` and ``train_seed``: every row is then a search row
    and repeats its own configuration."""
    if not path.is_file():
        return {}
    table = pd.read_csv(path, dtype={"trial_id": str, "config_id": str, "role": str})
    if "role" not in table:
        table["role"] = "search"
    if "config_id" not in table:
        table["config_id"] = table["trial_id"]
    table["role"] = table["role"].fillna("search")
    table["config_id"] = table["config_id"].fillna(table["trial_id"])
    return {str(r["trial_id"]): r for r in table.to_dict("records")}


def role(final: dict[str, Any] | None) -> str:
    """A trials.csv row's role: ``search``, or ``confirm`` for a retrain of a search
    configuration with another training seed."""
    value = (final or {}).get("role")
    return value if isinstance(value, str) and value else "search"


def in_start_order(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials by start time (the study's, else the first result's), then by trial id."""
    return trials.sort_values(
        ["started", "trial_id"], na_position="last", kind="stable"
    ).reset_index(drop=True)


def _one_per_epoch(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An epoch in flight when a driver died is replayed from the last checkpoint and
    reported again (with the same values); keep the last report of each epoch."""
    by_epoch = {r.get("epoch"): r for r in rows}
    return [by_epoch[e] for e in sorted(by_epoch, key=lambda e: (e is None, e))]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _test_metrics(final: dict | None) -> dict[str, float]:
    out = {}
    for key in TEST_COLUMNS:
        for suffix in ("", "_std"):
            value = (final or {}).get(f"test_{key}{suffix}")
            out[f"test_{key}{suffix}"] = float(value) if _finite(value) else math.nan
    return out


def load_runs(run_dirs: list[str | Path]) -> RunData:
    """Merge several run directories (e.g. a vitb16 and an rn50 search) into one."""
    if not run_dirs:
        raise ReportError("no run directory given")
    parts = [load_run(d) for d in run_dirs]
    metrics = {(p.metric, p.mode) for p in parts}
    if len(metrics) > 1:
        listed = ", ".join(f"{p.runs[0]}: {p.metric} ({p.mode})" for p in parts)
        raise ReportError(f"run directories use different metrics: {listed}")
    merged = RunData(
        runs=[r for p in parts for r in p.runs],
        metric=parts[0].metric,
        mode=parts[0].mode,
        params=list(dict.fromkeys(k for p in parts for k in p.params)),
        distributions={k: v for p in parts for k, v in p.distributions.items()},
        trials=in_start_order(pd.concat([p.trials for p in parts], ignore_index=True)),
        curves=pd.concat([p.curves for p in parts], ignore_index=True),
        finished=all(p.finished for p in parts),
        rungs=sorted({r for p in parts for r in p.rungs}),
        rungs_from=parts[0].rungs_from
        if len(parts) == 1
        else "; ".join(f"{p.runs[0]}: {p.rungs_from}" for p in parts),
        confirm_runs=sum(p.confirm_runs for p in parts),
    )
    if (merged.trials["status"] == "failed").all():
        reasons = merged.trials["status_detail"].value_counts().index[0]
        raise ReportError(f"every trial failed ({len(merged.trials)} trials; e.g. {reasons})")
    return merged
