"""The confirmation stage: the search's best configurations trained again with more seeds.

A search ranks configurations by one training run each, and seed-to-seed noise can reorder
close ones. After the search, the ``tune.confirm.top_k`` configurations of each backbone
(by the objective, complete trials first, as ``search.table.top_k``) are trained
``tune.confirm.seeds`` more times (``--confirm-seeds``): ``train.seed`` = the search run's
+ 1, ..., + seeds, with the same identity split (``data.split_seed``), full length (FIFO:
nothing is pruned), as Ray Tune trials on the search's resources and concurrency, sharing
its stage-1 cache. The stage-1 key holds ``train.seed`` (``handreid.train.stage1``), so
stage 1 is computed once per backbone and seed, and shared by the configurations.

Layout: each round of runs is a Tune experiment of its own in the search's experiment
folder, ``confirm-1``, ``confirm-2``, ..., whose ``plan.json`` (written before Tune starts)
lists its runs. A round holds the runs no earlier round planned: the first confirms, and
``--confirm RUN_DIR --confirm-seeds N`` later adds only the seeds beyond those planned.
The runs are a fixed list served by ``FixedRuns`` (no sampling; the Optuna study gets no
trial for them, only user attributes on the confirmed configurations' trials).

Resume: a round with saved Tune state is restored (``Tuner.restore``), and ``FixedRuns``
then takes Tune's saved trial list as the record of which runs exist: a run the list lacks
(a driver killed before a snapshot held it) is created again, a run it holds never twice.
A run's state folder is named after the run (configuration and seed), so a run created
again after a crash finds the end of the one it replaces instead of training again.

The wrap-up (``wrap_up``): ``confirm.csv`` (each configuration's mean and std over its
seeds, the search run's included), the winner per backbone (the best mean), every seed of
each winner scored on the test protocol, and ``best/<backbone>/test_metrics.json``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import pickle
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray.tune.search import Searcher

from search.assets import assets_location
from search.launch import make_trainable, trial_name, trial_resources
from search.resume import SearchStopped, set_aside_orphans
from search.rundir import (
    STUDY_FILE,
    experiment_path,
    is_uri,
    local_run_dir,
    read_search_meta,
    scratch_root,
    study_name,
)
from search.scoring import evaluate_checkpoint, save_best, test_metrics
from search.space import SCORE_SEED_OFFSET, SearchSpace
from search.table import search_table, top_k, trial_row
from search.tune_state import ENDED, align_search_state, saved_trials

log = logging.getLogger(__name__)

PREFIX = "confirm-"  # the rounds' Tune experiments: confirm-1, confirm-2, ...
PLAN = "plan.json"
SUMMARY = "confirm.csv"
METRICS = ("rank1", "rank5", "rank10", "mAP")
CONFIRM, SCORE = "confirm", "score"  # a run that helps choose the winner / scores it


@dataclass(frozen=True)
class Run:
    """One run of search trial ``config_id``'s configuration with another seed: a
    confirmation run (``role`` confirm, it helps choose) or a scoring run (score)."""

    config_id: str
    train_seed: int
    params: dict[str, Any] = field(compare=False)  # that trial's parameters (Optuna names)
    role: str = CONFIRM

    @property
    def key(self) -> str:
        return f"{self.role}_{self.config_id}_seed{self.train_seed}"

    def as_config(self) -> dict[str, Any]:
        return {
            "config_id": self.config_id,
            "train_seed": self.train_seed,
            "params": self.params,
            "role": self.role,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Run:
        role = str(config.get("role", CONFIRM))  # plans written before scoring runs: confirm
        params = dict(config["params"])
        return cls(str(config["config_id"]), int(config["train_seed"]), params, role)


def run_confirm_trial(
    config: dict[str, Any],
    *,
    space: SearchSpace,
    extra: dict[str, Any],
    scratch_root: str | None,
    assets: str | None = None,
) -> None:
    """The trainable of a confirmation run: the search trial's parameters, another seed."""
    from search.trainable import run_trial

    run = Run.from_config(config)
    params = {**run.params, "train.seed": run.train_seed}
    run_trial(
        params,
        space=space,
        extra=extra,
        scratch_root=scratch_root,
        state_key=run.key,
        assets=assets,
    )


# ------------------------------------------------------------------ the fixed list of runs

# round path -> the runs Tune's saved trial list holds, set by the driver before a restore
_created: dict[str, set[str]] = {}


class FixedRuns(Searcher):
    """Suggests each run of a list once, in order, then FINISHED."""

    def __init__(self, runs: list[dict[str, Any]], path: str):
        super().__init__()
        self.runs, self.path = runs, path
        self.created: set[str] = set()

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self._metric, self._mode = metric, mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if self.path in _created:  # restored: the saved trial list says what exists
            self.created = _created.pop(self.path)
        for config in self.runs:
            key = Run.from_config(config).key
            if key not in self.created:
                self.created.add(key)
                return copy.deepcopy(config)
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(sorted(self.created), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.created = set(pickle.load(f))


# ------------------------------------------------------------------ planning


def confirm_seeds(space: SearchSpace, opts) -> int:
    return space.tune.confirm.seeds if opts.confirm_seeds is None else opts.confirm_seeds


def score_seed_count(space: SearchSpace, opts) -> int:
    given = getattr(opts, "score_seeds", None)
    return space.tune.confirm.score_seeds if given is None else given


def wanted_runs(space: SearchSpace, table: pd.DataFrame, results: dict, seeds: int) -> list[Run]:
    """The runs the settings ask for: each top-k configuration per backbone with ``seeds``
    more seeds, seed by seed (an interrupted confirmation has seeds of every config)."""
    # complete trials only: a pruned trial's early best is no seed of a full-length run
    picks = top_k(table[table["status"] == "complete"], space.tune.confirm.top_k)
    configs = []
    for trial_id, path in zip(picks["trial_id"], picks["path"]):
        params = dict(results[Path(path).name].config or {})
        configs.append((str(trial_id), space.trial_config(params).train.seed, params))
    return [Run(c, base + i, p) for i in range(1, seeds + 1) for c, base, p in configs]


def _fs(path: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path)


def read_rounds(experiment: str) -> list[tuple[str, list[Run]]]:
    """The planned rounds in the experiment folder, oldest first."""
    import pyarrow.fs

    fs, root = _fs(experiment)
    selector = pyarrow.fs.FileSelector(root, allow_not_found=True)
    names = [
        info.base_name
        for info in fs.get_file_info(selector)
        if info.type == pyarrow.fs.FileType.Directory
        and info.base_name.startswith(PREFIX)
        and info.base_name[len(PREFIX) :].isdigit()
    ]
    rounds = []
    for name in sorted(names, key=lambda n: int(n[len(PREFIX) :])):
        plan = f"{root}/{name}/{PLAN}"
        if fs.get_file_info(plan).type != pyarrow.fs.FileType.File:
            continue  # killed before its plan was written: nothing of it ran
        with fs.open_input_stream(plan) as f:
            doc = json.loads(f.readall())
        rounds.append((name, [Run.from_config(c) for c in doc["runs"]]))
    return rounds


def write_plan(experiment: str, name: str, runs: list[Run]) -> None:
    fs, root = _fs(experiment)
    fs.create_dir(f"{root}/{name}", recursive=True)
    tmp = f"{root}/{name}/.{PLAN}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps({"runs": [r.as_config() for r in runs]}, indent=1).encode())
    fs.move(tmp, f"{root}/{name}/{PLAN}")


def has_state(path: str) -> bool:
    """Whether Tune saved the round's state (its tuner and a snapshot of its trials)."""
    import fnmatch

    import pyarrow.fs

    fs, root = _fs(path)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    names = {info.base_name for info in infos}
    snapshots = fnmatch.filter(names, "experiment_state-*.json")
    return "tuner.pkl" in names and bool(snapshots)


# ------------------------------------------------------------------ running


def run_confirmation(space: SearchSpace, opts, grid, stop) -> list[tuple[Run, Any]] | None:
    """Plan and run (or resume) the confirmation after a finished search, then the scoring
    runs of each backbone's winner; returns the runs of the confirmed configurations and
    the winners' scoring runs with their Tune results, or None when confirmation is off."""
    seeds = confirm_seeds(space, opts)
    if seeds == 0 or space.tune.confirm.top_k == 0:
        return None
    experiment = experiment_path(opts)
    results = {Path(r.path).name: r for r in grid}
    table = search_table(space, grid)
    wanted = wanted_runs(space, table, results, seeds)
    if not wanted:  # no trial ended well: nothing to confirm
        log.warning("confirmation: no complete trial to confirm")
        return None
    rounds = read_rounds(experiment)
    most = seeds_run(wanted, rounds)
    if most > seeds:  # every configuration is compared over the same seeds
        log.warning(
            "confirmation: %d seeds asked, but %d already ran for some configuration: "
            "every confirmed configuration gets %d",
            seeds,
            most,
            most,
        )
        wanted = wanted_runs(space, table, results, most)
    plan_missing(experiment, rounds, wanted)
    done = run_rounds(space, opts, rounds, stop)
    keys = {r.key for r in wanted}
    selection = [(run, result) for run, result in done if run.key in keys]
    scoring = scoring_runs(space, table, selection, score_seed_count(space, opts))
    if plan_missing(experiment, rounds, scoring):
        done += run_rounds(space, opts, rounds[-1:], stop)
    keys = {r.key for r in scoring}
    return selection + [(run, result) for run, result in done if run.key in keys]


def seeds_run(wanted: list[Run], rounds: list[tuple[str, list[Run]]]) -> int:
    """The most confirmation seeds any of the ``wanted`` configurations has been planned."""
    base: dict[str, int] = {}  # each configuration's search seed (its seed 1 comes first)
    for run in wanted:
        base.setdefault(run.config_id, run.train_seed - 1)
    return max(
        (
            r.train_seed - base[r.config_id]
            for _, runs in rounds
            for r in runs
            if r.role == CONFIRM and r.config_id in base
        ),
        default=0,
    )


def plan_missing(experiment: str, rounds: list, runs: list[Run]) -> bool:
    """Append a round of the ``runs`` no round planned yet (its plan written); whether any."""
    planned = {r.key for _, old in rounds for r in old}
    missing = [r for r in runs if r.key not in planned]
    if not missing:
        return False
    number = 1 + max((int(n[len(PREFIX) :]) for n, _ in rounds), default=0)
    rounds.append((f"{PREFIX}{number}", missing))
    write_plan(experiment, *rounds[-1])
    configs = len({r.config_id for r in missing})
    what = "scoring" if missing[0].role == SCORE else "confirmation"
    log.info("%s: %d runs of %d configurations", what, len(missing), configs)
    return True


def run_rounds(space: SearchSpace, opts, rounds: list, stop) -> list[tuple[Run, Any]]:
    done = []
    for name, runs in rounds:  # earlier rounds first; a finished one is only read back
        done += run_round(space, opts, name, runs, stop)
    return done


def scoring_runs(space: SearchSpace, table, selection, count: int) -> list[Run]:
    """``count`` fresh seeds of each backbone's winner (best mean over the seeds that chose
    it): the search run's seed + SCORE_SEED_OFFSET + 1, 2, ..."""
    configs = summary(space, pd.concat([table, run_table(space, selection)], ignore_index=True))
    search = table.set_index("trial_id")
    params = {run.config_id: run.params for run, _ in selection}
    runs = []
    for config_id in configs.loc[configs["winner"], "config_id"]:
        base = int(search.loc[config_id, "train_seed"])
        for i in range(1, count + 1):
            seed = base + SCORE_SEED_OFFSET + i
            runs.append(Run(str(config_id), seed, params[config_id], SCORE))
    return runs


def round_ended(trials: list, runs: list[Run]) -> bool:
    created = {Run.from_config(t.config).key for t in trials}
    return created >= {r.key for r in runs} and all(t.status in ENDED for t in trials)


def run_round(space: SearchSpace, opts, name: str, runs: list[Run], stop) -> list:
    """One round to its end: new, restored, or (finished) read back."""
    from ray import tune

    path = f"{experiment_path(opts)}/{name}"
    trainable = make_trainable(space, opts, local_run_dir(opts), fn=run_confirm_trial)
    trials = saved_trials(path) if has_state(path) else None
    errored = trials is not None and any(t.status == "ERROR" for t in trials)
    if trials is not None and round_ended(trials, runs) and not (opts.retry_failed and errored):
        grid = tune.Tuner.restore(path, trainable=trainable).get_results()
    else:
        if trials is None:  # new (or killed before Tune saved anything of it)
            tuner = confirm_tuner(space, opts, name, runs, trainable)
        else:
            align_search_state(path, trials)
            _created[path] = {Run.from_config(t.config).key for t in trials}
            tuner = tune.Tuner.restore(
                path,
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=opts.retry_failed,
            )
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:  # a second signal cut Tune's last state snapshot short
            grid = None
        _created.pop(path, None)
        if grid is None or not round_ended(saved_trials(path), runs):
            raise SearchStopped(stop.signum, path, "confirmation")
    if not is_uri(opts.storage):
        set_aside_orphans(Path(path), grid)
    planned = {r.key: r for r in runs}
    out = []
    for result in grid:
        run = Run.from_config(result.config)
        out.append((planned.get(run.key, run), result))
    return out


def run_label(trial) -> str:
    """A confirmation run in the terminal: the configuration it repeats, and its seed."""
    run = Run.from_config(trial.config)
    return f"{run.role} {run.config_id} seed {run.train_seed}"


def round_kind(runs: list[Run]) -> str:
    return "scoring" if runs and runs[0].role == SCORE else "confirmation"


def confirm_tuner(space: SearchSpace, opts, name: str, runs: list[Run], trainable):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search.progress import TrialSummary

    t = space.tune
    path = f"{experiment_path(opts)}/{name}"
    concurrent = opts.max_concurrent or read_search_meta(local_run_dir(opts))["max_concurrent"]
    searcher = FixedRuns([r.as_config() for r in runs], path)
    tune_config = tune.TuneConfig(
        metric="objective",
        mode=t.mode,
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrent),
        num_samples=len(runs),  # no scheduler: FIFO, every run to its end
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
        # one process serves trial after trial: no actor start, torch and open_clip import
        # per trial (the demo's 24 trials: 96 s instead of about 170 s on 2 cores)
        reuse_actors=True,
    )
    run_config = tune.RunConfig(
        name=name,
        storage_path=experiment_path(opts),
        failure_config=tune.FailureConfig(max_failures=t.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=t.checkpoints_to_keep),
        callbacks=[TrialSummary(t.metric, len(runs), label=run_label, desc=round_kind(runs))]
        if opts.progress
        else [],
        verbose=opts.verbose,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


# ------------------------------------------------------------------ wrap-up


def run_table(space: SearchSpace, confirmed: list[tuple[Run, Any]]) -> pd.DataFrame:
    """The confirmation and scoring runs as trials.csv rows (``role`` confirm or score)."""
    rows = []
    for run, result in confirmed:
        row = trial_row(space, result, {**run.params, "train.seed": run.train_seed})
        rows.append({**row, "role": run.role, "config_id": run.config_id})
    table = pd.DataFrame(rows)
    return table.sort_values(["backbone", "config_id", "train_seed"], kind="stable")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and math.isfinite(value)


def summary(space: SearchSpace, table: pd.DataFrame) -> pd.DataFrame:
    """confirm.csv: one row per confirmed configuration, over the validation objective of
    all its seeds (the search run's included; a run that did not complete is left out)."""
    metric, sign = f"best_{space.tune.metric}", 1.0 if space.tune.mode == "max" else -1.0
    search = table[table["role"] == "search"].set_index("trial_id")
    runs = table[table["role"] == CONFIRM]
    rows = []
    for config_id, part in runs.groupby("config_id", sort=False):
        own = search.loc[config_id]
        values = [own[metric]] if _finite(own[metric]) else []
        for r in part.to_dict("records"):
            if r["status"] == "complete" and _finite(r[metric]):
                values.append(float(r[metric]))
            else:
                log.warning(
                    "confirmation run %s (configuration %s, seed %s) ended %s: left out of "
                    "its mean",
                    r["trial_id"],
                    config_id,
                    r["train_seed"],
                    r["status"],
                )
        rows.append(
            {
                "backbone": own["backbone"],
                "config_id": config_id,
                "runs": len(values),
                "val_mean": float(np.mean(values)) if values else math.nan,
                "val_std": float(np.std(values)) if values else math.nan,  # ddof 0
                "search_val": own[metric],
            }
        )
    out = pd.DataFrame(rows)
    for column, source in (("single_seed_rank", "search_val"), ("confirmed_rank", "val_mean")):
        key = (sign * -out[source]).fillna(math.inf)  # best first; NaN last
        out[column] = key.groupby(out["backbone"]).rank(method="first").astype(int)
    out["winner"] = out["confirmed_rank"] == 1
    return out.sort_values(["backbone", "confirmed_rank"], kind="stable", ignore_index=True)


def wrap_up(space: SearchSpace, opts, table, results: dict, confirmed, run_dir: Path) -> dict:
    """confirm.csv, the scoring runs of each backbone's confirmed winner (fresh seeds, which
    chose nothing) scored on the test protocol, best/<backbone>/, and the study's user
    attributes. Returns the test metrics per scored run (trial id), for the test_* columns
    of trials.csv: only scoring runs have them."""
    configs = summary(space, table)
    write_csv(configs, run_dir / SUMMARY)
    seeds = winner_seeds(table, confirmed, configs, SCORE)
    tests = score_seeds(space, opts, seeds)
    selection = winner_seeds(table, confirmed, configs, CONFIRM)
    for backbone, part in configs.groupby("backbone", sort=False):
        write_best(space, opts, run_dir, part, seeds[backbone], selection[backbone], tests)
    record_in_study(run_dir / STUDY_FILE, study_name(opts), configs)
    return tests


def write_csv(table: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)


def drop_summary(run_dir: Path) -> None:
    """Confirmation off: a confirm.csv of an earlier wrap-up would describe another best/."""
    if (run_dir / SUMMARY).is_file():
        (run_dir / SUMMARY).unlink()
        log.info("confirmation off: removed the earlier %s", run_dir / SUMMARY)


@dataclass
class Seed:
    """One seed of a winner: its run's row in trials.csv, parameters and Tune result."""

    row: dict[str, Any]
    params: dict[str, Any]
    result: Any


def winner_seeds(table, confirmed, configs, role: str) -> dict[str, list[Seed]]:
    """Each backbone's winner's runs of ``role`` by seed: the scoring runs (SCORE), or the
    runs that chose it (CONFIRM: the search run first, then its confirmation runs)."""
    by_path = {str(r["path"]): r for r in table.to_dict("records")}
    out: dict[str, list[Seed]] = {}
    for w in configs[configs["winner"]].itertuples():
        seeds = []
        if role == CONFIRM:
            row = table[(table["role"] == "search") & (table["trial_id"] == w.config_id)]
            seeds.append(Seed(row.iloc[0].to_dict(), {}, None))
        for run, res in sorted(confirmed, key=lambda x: x[0].train_seed):
            if run.config_id == w.config_id and run.role == role:
                params = {**run.params, "train.seed": run.train_seed}
                seeds.append(Seed(by_path[str(res.path)], params, res))
        out[w.backbone] = seeds
    return out


def score_seeds(space, opts, seeds: dict[str, list[Seed]]) -> dict[str, dict]:
    """The test protocol on each seed's best checkpoint, in Ray tasks (as the top-k's)."""
    import ray

    cpus, gpus = trial_resources(space, opts)
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(evaluate_checkpoint)
    refs, out = {}, {}
    for seed in (s for group in seeds.values() for s in group):
        trial_id, row = str(seed.row["trial_id"]), seed.row
        if row["status"] == "failed" or seed.result.checkpoint is None:
            why = row["fail_reason"] if row["status"] == "failed" else "no checkpoint"
            out[trial_id] = {"error": f"training {row['status']}: {why}"}
            log.warning("seed %s of %s not scored: %s", row["train_seed"], trial_id, why)
            continue
        cfg = space.trial_config(seed.params, {"train.cpu": gpus == 0})
        refs[trial_id] = task.remote(
            cfg, seed.result.checkpoint, scratch_root(opts), assets_location(opts)
        )
    for trial_id, ref in refs.items():
        out[trial_id] = test_metrics(ref, trial_id)
    return out


def seed_entry(seed: Seed, metric: str, test: dict) -> dict[str, Any]:
    head = {"trial_id": str(seed.row["trial_id"]), "train_seed": int(seed.row["train_seed"])}
    if "error" in test:
        return {**head, "error": test["error"]}
    return {
        **head,
        "val": _number(seed.row[f"best_{metric}"]),
        **{m: _number(test.get(m)) for m in METRICS},
        "per_split": [{m: _number(s.get(m)) for m in METRICS} for s in test["per_split"]],
    }


def _number(value: Any) -> float | None:
    return float(value) if _finite(value) else None


def write_best(
    space, opts, run_dir: Path, configs, seeds: list[Seed], selection: list[Seed], tests
) -> None:
    """best/<backbone>/: the confirmed winner's first scoring run (config, weights), the
    test metrics of its scoring runs (mean and std over seeds x splits), and the validation
    values of the runs that chose it (``selection``: evidence for the choice, never scored)."""
    winner = configs[configs["winner"]].iloc[0]
    single = str(configs[configs["single_seed_rank"] == 1]["config_id"].iloc[0])
    entries = [seed_entry(s, space.tune.metric, tests[str(s.row["trial_id"])]) for s in seeds]
    scored = [e for e in entries if "error" not in e]
    if len(scored) < len(entries):
        log.warning(
            "%s: %d of %d scoring seeds of the winner have no test score; left out of the means",
            winner["backbone"],
            len(entries) - len(scored),
            len(entries),
        )
    metric = f"best_{space.tune.metric}"
    doc: dict[str, Any] = {
        "trial_id": winner["config_id"],
        "config_id": winner["config_id"],
        "confirmed": True,
        "scored_on": "fresh seeds",  # seeds that took no part in choosing the winner
        "single_seed_winner": single,
        "same_as_single_seed": single == winner["config_id"],
        "val_mean": _number(winner["val_mean"]),
        "val_std": _number(winner["val_std"]),
        "seeds": entries,
        "selection": [
            {
                "trial_id": str(s.row["trial_id"]),
                "train_seed": int(s.row["train_seed"]),
                "role": str(s.row.get("role", "search")),
                "val": _number(s.row.get(metric)),
            }
            for s in selection
        ],
    }
    for m in METRICS:
        values = np.array([s[m] for e in scored for s in e["per_split"]], dtype=float)
        values = values[np.isfinite(values)]
        doc[m] = float(values.mean()) if values.size else None
        doc[f"{m}_std"] = float(values.std()) if values.size else None
    folder = run_dir / "best" / str(winner["backbone"])
    kept = next((s for s in seeds if s.result.checkpoint is not None), None)
    if kept is None:
        log.warning("%s: no scoring run of the winner has weights to keep", folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "test_metrics.json", doc)
        return
    cfg = space.trial_config(kept.params)
    save_best(folder, cfg, kept.result.checkpoint, scratch_root(opts), doc)


def write_json(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=float))
    tmp.replace(path)


def record_in_study(path: Path, name: str, configs: pd.DataFrame) -> None:
    """``confirmed_val_mean``, ``confirmed_val_std`` and ``confirmed_runs`` on the study
    trial of each confirmed configuration. Optuna refuses to change a finished trial's
    attributes through its API, so they go into its ``trial_user_attributes`` table."""
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{path}")
    ids = {t.user_attrs.get("ray_trial_id"): t._trial_id for t in study.get_trials(deepcopy=False)}
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for row in configs.itertuples():
            if row.config_id not in ids:
                log.warning("configuration %s has no trial in the study", row.config_id)
                continue
            attrs = {
                "confirmed_val_mean": _number(row.val_mean),
                "confirmed_val_std": _number(row.val_std),
                "confirmed_runs": int(row.runs),
            }
            for key, value in attrs.items():
                db.execute(
                    "DELETE FROM trial_user_attributes WHERE trial_id = ? AND key = ?",
                    (ids[row.config_id], key),
                )
                db.execute(
                    "INSERT INTO trial_user_attributes (trial_id, key, value_json) "
                    "VALUES (?, ?, ?)",
                    (ids[row.config_id], key, json.dumps(value)),
                )


def kept_states(table: pd.DataFrame, confirmed: list[tuple[Run, Any]]) -> set[str]:
    """Scratch folders the wrap-up keeps: every run of the confirmed configurations (a later
    ``--confirm`` with more seeds may pick another winner and score its seeds)."""
    configs = set(table.loc[table["role"] == "confirm", "config_id"])
    return configs | {run.key for run, _ in confirmed}
