"""Search efficiency on LCBench, YAHPO Gym's surrogate of 34 OpenML tasks' learning curves:
the shipped strategy against random search, random + ASHA, Optuna's TPE + HyperbandPruner
and DEHB, side by side in one run (issue 28).

    python -m bench.lcbench run            # 6 tasks x 20 searches x 5 strategies
    python -m bench.lcbench run --quick    # 2 tasks x 3 searches (a 5,000-config reference)
    python -m bench.lcbench markdown       # the table of the last run, for BENCHMARKS.md

The first run creates ``.venv-yahpo/`` (yahpo-gym 1.0.2 and dehb 0.1.2, which need numpy
1.x, from the package index pip is configured with) and starts the surrogate
(``bench/lcbench_surrogate.py``) and DEHB (``bench/dehb_server.py``) in it, each in its own
process speaking JSON lines. The surrogate's data is vendored in
``bench/data/yahpo_lcbench`` (Apache-2.0, see its SOURCE.txt).

A search has a budget of 30 full trials in epochs (30 x 52) and runs ``--concurrency``
trials at a time (default 4, the real spaces' ``tune.max_concurrent``): every running trial
trains one epoch per step, in the order the trials started, and a trial that ends frees
its slot for the next suggestion, through the same calls Tune makes (``TuneLoop``). A
trial reports its best-so-far validation accuracy after each epoch, as the trainable
does. The incumbent is the best final value among trials trained to epoch 52: a pruned
trial's early value counts for nothing. Regret is normalised by the task's best value
(of a 20,000-configuration random sample and every trial of the run) minus the median of
that sample. Tasks 167168, 189873 and 189906 are held out for an independent check and
refused here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.objective import best_so_far, judged_from

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "yahpo_lcbench"
VENV = REPO / ".venv-yahpo"
PINS = ("yahpo-gym==1.0.2", "dehb==0.1.2")
RESULT = "lcbench"
SHIPPED_SPACE = REPO / "spaces" / "vitb16.yml"

EPOCHS = 52  # LCBench's full schedule
FULL_TRIALS = 30  # the budget: 30 full trials' epochs
HELD_OUT = ("167168", "189873", "189906")  # the independent check's: never used here
# six of the 31 others, drawn before any was run: numpy's default_rng(28).choice of the
# others in config_space.json's order, 6 without replacement (``draw_tasks``)
TASKS = ("146212", "168908", "189862", "168910", "168329", "189354")
QUICK_TASKS = TASKS[:2]

# LCBench's search space (YAHPO's config_space.json, the task id and epoch left out)
PARAMS = (
    ("batch_size", "int", 16, 512, True),
    ("learning_rate", "float", 1e-4, 1e-1, True),
    ("momentum", "float", 0.1, 0.99, False),
    ("weight_decay", "float", 1e-5, 1e-1, False),
    ("num_layers", "int", 1, 5, False),
    ("max_units", "int", 64, 1024, True),
    ("max_dropout", "float", 0.0, 1.0, False),
)


def draw_tasks(n: int = 6, seed: int = 28) -> list[str]:
    """How ``TASKS`` was chosen: ``n`` of LCBench's tasks less the held-out ones, at random."""
    doc = json.loads((DATA / "lcbench" / "config_space.json").read_text())
    ids = next(h["choices"] for h in doc["hyperparameters"] if h["name"] == "OpenML_task_id")
    others = [t for t in ids if t not in HELD_OUT]
    return [str(t) for t in np.random.default_rng(seed).choice(others, n, replace=False)]


# ------------------------------------------------------------------ the yahpo venv


def ensure_venv() -> Path:
    """``.venv-yahpo``'s python, creating the venv on first use (pip reads the package index
    from its own configuration)."""
    python = VENV / "bin" / "python"
    stamp = VENV / (".installed-" + "-".join(PINS))
    if stamp.is_file():
        return python
    log.info("creating %s with %s (once)", VENV, ", ".join(PINS))
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PINS], check=True)
    stamp.write_text("")
    return python


class Server:
    """A JSON-lines subprocess of the yahpo venv: one request a line, one reply a line."""

    def __init__(self, script: str, *args: str):
        self.name = script
        self.proc = subprocess.Popen(
            [str(ensure_venv()), str(Path(__file__).parent / script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        ready = self._read()
        if "ready" not in ready:
            raise RuntimeError(f"{script} did not start: {ready}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} ended (exit code {self.proc.poll()})")
        return json.loads(line)

    def call(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']} (request {request.get('cmd')})")
        return reply

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class Surrogate:
    """LCBench's learning curves (validation accuracy, epochs 1-52) from YAHPO's surrogate."""

    def __init__(self):
        self.server = Server("lcbench_surrogate.py", str(DATA))

    def curves(self, task: str, configs: list[dict]) -> list[list[float]]:
        if task in HELD_OUT:
            raise ValueError(f"task {task} is held out for an independent check")
        return self.server.call({"task": task, "configs": configs})["val_accuracy"]

    def objective(self, task: str) -> Callable[[dict], list[float]]:
        """A configuration -> the best-so-far curve it reports (as the trainable does)."""
        return lambda config: best_so_far(self.curves(task, [config])[0], "max")


# ------------------------------------------------------------------ the space


def lcbench_space(space_file: Path = SHIPPED_SPACE, **tune_changes: Any):
    """LCBench's parameters as a ``SearchSpace`` with the shipped space's strategy settings
    (sampler, rungs as the same fractions of 52 epochs, brackets, judge point), so that
    ``search.strategy`` builds its searcher and scheduler for it as for the real search."""
    from search.space import Branch, Param, SearchSpace, load_space

    shipped = load_space(space_file)
    scale = EPOCHS / shipped.max_epochs
    rungs = sorted({max(1, round(r * scale)) for r in shipped.tune.milestones(shipped.max_epochs)})
    changes = {"max_epochs": EPOCHS, "rungs": tuple(rungs), "balance": None, "bracket_by": None}
    changes.update(tune_changes)  # a variant under test: e.g. {"rungs": [9], ...}
    if isinstance(changes["rungs"], list):
        changes["rungs"] = tuple(changes["rungs"])
    tune = dataclasses.replace(shipped.tune, **changes)
    params = [
        Param(name, (Branch(name, kind, float(low), float(high), log),))
        for name, kind, low, high, log in PARAMS
    ]
    return SearchSpace("lcbench", shipped.base, {}, params, [], tune)


def random_configs(n: int, seed: int) -> list[dict]:
    """``n`` configurations drawn uniformly (log-uniformly where the space says log)."""
    rng = np.random.default_rng(seed)
    cols = {}
    for name, kind, low, high, log_scale in PARAMS:
        lo, hi = (math.log(low), math.log(high)) if log_scale else (low, high)
        x = rng.uniform(lo, hi, n)
        x = np.exp(x) if log_scale else x
        cols[name] = np.clip(np.round(x), low, high).astype(int) if kind == "int" else x
    return [{k: v[i].item() for k, v in cols.items()} for i in range(n)]


# ------------------------------------------------------------------ strategies


class Strategy:
    """What the search loop needs of a strategy: ``ask`` for a trial (id, configuration,
    epochs it will run), ``report`` each epoch's objective (False: stop it), ``end`` it."""

    def ask(self) -> tuple[str, dict, int] | None:
        raise NotImplementedError

    def report(self, trial_id: str, epoch: int, objective: float, last: bool) -> bool:
        raise NotImplementedError

    def end(self, trial_id: str) -> None:
        raise NotImplementedError


class Product(Strategy):
    """A searcher and scheduler of ``search.strategy``, driven by ``TuneLoop``."""

    def __init__(self, space, seed: int, concurrency: int, *, sampler=None, prune: bool = True):
        from search.strategy import TuneLoop, build_scheduler, build_searcher

        t = space.tune
        scheduler = build_scheduler(space, metric="objective", mode=t.mode) if prune else None
        searcher = build_searcher(space, seed=seed, sampler=sampler)
        self.loop = TuneLoop(searcher, scheduler, max_concurrent=concurrency, tag=f"{seed:05x}")
        self.judged = judged_from(0.0, t.judge_after, EPOCHS)  # LCBench: no warm-up

    def ask(self):
        started = self.loop.start()
        return None if started is None else (*started, EPOCHS)

    def report(self, trial_id, epoch, objective, last):
        status = "done" if last else "running"
        result = {"epoch": epoch, "objective": objective, "status": status, **self.judged}
        return self.loop.report(trial_id, result)

    def end(self, trial_id):
        self.loop.end(trial_id)


class OptunaHyperband(Strategy):
    """Optuna's own TPE (its defaults) with its HyperbandPruner (min 1, max 52 epochs,
    reduction 3), asked and told as Optuna's docs run trials in parallel."""

    def __init__(self, space, seed: int):
        import optuna

        self.space = space
        self.study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.HyperbandPruner(
                min_resource=1, max_resource=EPOCHS, reduction_factor=3
            ),
        )
        self.trials: dict[str, Any] = {}
        self.last: dict[str, tuple[float, bool]] = {}

    def ask(self):
        trial = self.study.ask()
        self.space.define_by_run(trial)
        trial_id = str(trial.number)
        self.trials[trial_id] = trial
        return trial_id, dict(trial.params), EPOCHS

    def report(self, trial_id, epoch, objective, last):
        trial = self.trials[trial_id]
        trial.report(objective, epoch)
        self.last[trial_id] = (objective, last)
        return last or not trial.should_prune()

    def end(self, trial_id):
        import optuna

        trial, (objective, last) = self.trials.pop(trial_id), self.last.pop(trial_id)
        if last:
            self.study.tell(trial, objective)
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)


class DEHBStrategy(Strategy):
    """DEHB (min fidelity 1, max 52 epochs, eta 3) in the yahpo venv: each job trains a
    configuration from scratch for its fidelity (rounded to whole epochs) and tells DEHB
    its objective there; jobs at 52 epochs are full trials."""

    def __init__(self, server: Server, seed: int):
        self.server, self.id = server, f"dehb-{seed}-{time.monotonic_ns()}"
        space = [
            {"name": n, "type": k, "low": lo, "high": hi, "log": lg} for n, k, lo, hi, lg in PARAMS
        ]
        server.call(
            {
                "cmd": "new",
                "id": self.id,
                "seed": seed,
                "space": space,
                "min_fidelity": 1,
                "max_fidelity": EPOCHS,
                "eta": 3,
            }
        )
        self.jobs: dict[str, tuple[int, float, int]] = {}  # trial -> (job, objective, epoch)

    def ask(self):
        job = self.server.call({"cmd": "ask", "id": self.id})
        trial_id = f"{self.id}-{job['job']}"
        self.jobs[trial_id] = (job["job"], math.nan, 0)
        return trial_id, job["config"], max(1, min(EPOCHS, round(job["fidelity"])))

    def report(self, trial_id, epoch, objective, last):
        self.jobs[trial_id] = (self.jobs[trial_id][0], objective, epoch)
        return True

    def end(self, trial_id):
        job, objective, epoch = self.jobs.pop(trial_id)
        request = {"cmd": "tell", "id": self.id, "job": job, "fitness": -objective, "cost": epoch}
        self.server.call(request)

    def close(self) -> None:
        self.server.call({"cmd": "drop", "id": self.id})


def random_sampler(seed: int):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def textbook_asha(space):
    """ASHA as its paper and Ray's defaults run it: rungs from epoch 1, reduction 3."""
    tune = dataclasses.replace(space.tune, rungs=None, grace_period=1, reduction_factor=3)
    return dataclasses.replace(space, tune=dataclasses.replace(tune, brackets=1))


def before_28(space):
    """The shipped strategy before issue 28: ASHA's cut alone, 8 random trials first."""
    tune = dataclasses.replace(space.tune, promote_top=None, n_startup_trials=8)
    return dataclasses.replace(space, tune=tune)


# name -> (space, seed, concurrency, servers) -> Strategy
STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "random": lambda sp, s, c, _: Product(sp, s, c, sampler=random_sampler(s), prune=False),
    "random + ASHA": lambda sp, s, c, _: Product(
        textbook_asha(sp), s, c, sampler=random_sampler(s)
    ),
    "Optuna TPE + Hyperband": lambda sp, s, c, _: OptunaHyperband(sp, s),
    "DEHB": lambda sp, s, c, servers: DEHBStrategy(servers.dehb(), s),
    "shipped": lambda sp, s, c, _: Product(sp, s, c),
    # ablations of the shipped strategy, on request
    "shipped before issue 28": lambda sp, s, c, _: Product(before_28(sp), s, c),
    "shipped TPE, no pruning": lambda sp, s, c, _: Product(sp, s, c, prune=False),
    "random + shipped rungs": lambda sp, s, c, _: Product(sp, s, c, sampler=random_sampler(s)),
}
DEFAULT = ("random", "random + ASHA", "Optuna TPE + Hyperband", "DEHB", "shipped")


class Servers:
    """The yahpo venv's processes, started when first needed, one of each per process."""

    def __init__(self):
        self._surrogate: Surrogate | None = None
        self._dehb: Server | None = None

    def surrogate(self) -> Surrogate:
        self._surrogate = self._surrogate or Surrogate()
        return self._surrogate

    def dehb(self) -> Server:
        self._dehb = self._dehb or Server("dehb_server.py")
        return self._dehb

    def close(self) -> None:
        for server in (self._dehb, self._surrogate and self._surrogate.server):
            if server is not None:
                server.close()


# ------------------------------------------------------------------ one search


@dataclass
class Running:
    config: dict
    curve: list[float]
    stop_at: int  # epochs this trial runs unless stopped (52, or DEHB's fidelity)
    started: int  # compute spent when it started
    epoch: int = 0


@dataclass
class Finished:
    epochs: int
    complete: bool  # trained to epoch 52
    value: float  # its objective at its last epoch
    at: int  # compute spent when it ended


def run_search(
    strategy: Strategy, curve_of: Callable[[dict], list[float]], budget: int, concurrency: int
) -> list[Finished]:
    """One search: ``concurrency`` trials at a time, each running trial one epoch per step
    in the order the trials started, until ``budget`` epochs are spent; trials still running
    then are cut (not complete)."""
    running: dict[str, Running] = {}
    done: list[Finished] = []
    spent = 0
    while spent < budget:
        while len(running) < concurrency and (asked := strategy.ask()) is not None:
            trial_id, config, stop_at = asked
            running[trial_id] = Running(config, curve_of(config), stop_at, spent)
        if not running:
            break
        for trial_id in list(running):
            if spent >= budget:
                break
            spent += 1
            trial = running[trial_id]
            trial.epoch += 1
            value, last = trial.curve[trial.epoch - 1], trial.epoch >= trial.stop_at
            if not strategy.report(trial_id, trial.epoch, value, trial.epoch == EPOCHS) or last:
                strategy.end(trial_id)
                done.append(Finished(trial.epoch, trial.epoch == EPOCHS, value, spent))
                del running[trial_id]
    return done


def incumbents(trials: list[Finished]) -> list[tuple[int, float]]:
    """(compute, best final value so far) at each full trial that improved it."""
    out, best = [], -math.inf
    for t in sorted((t for t in trials if t.complete), key=lambda t: t.at):
        if t.value > best:
            best = t.value
            out.append((t.at, best))
    return out


# ------------------------------------------------------------------ reference and regret


@dataclass(frozen=True)
class Reference:
    """A task's scale: the best value known and the median (and mean) of random configs."""

    best: float
    median: float
    mean: float

    def regret(self, value: float | None) -> float:
        """Normalised regret; a search without a full trial yet gets a blind pick's mean."""
        value = self.mean if value is None else value
        return (self.best - value) / (self.best - self.median)


def sample_values(surrogate: Surrogate, task: str, n: int = 20_000, seed: int = 28) -> np.ndarray:
    """Final objectives (best-so-far at epoch 52) of ``n`` random configurations, kept in
    bench/results/ after the first time."""
    from bench.common import RESULTS

    cache = RESULTS / f"lcbench_sample_{task}_{n}_{seed}.json"
    if cache.is_file():
        return np.array(json.loads(cache.read_text()))
    configs = random_configs(n, seed)
    values = []
    for i in range(0, n, 1000):
        for curve in surrogate.curves(task, configs[i : i + 1000]):
            values.append(max(curve))
    RESULTS.mkdir(exist_ok=True)
    cache.write_text(json.dumps(values))
    return np.array(values)


def regret_curve(trials: list[Finished], ref: Reference, budget: int) -> np.ndarray:
    """Normalised regret of the incumbent after each epoch of compute, 1..budget."""
    out = np.full(budget, ref.regret(None))
    for at, best in incumbents(trials):
        out[at - 1 :] = ref.regret(best)
    return out


def compute_to_reach(mean_curve: np.ndarray, target: float) -> float:
    """The first compute (epochs) at which a mean regret curve is at or below ``target``."""
    hit = np.nonzero(mean_curve <= target + 1e-12)[0]
    return float(hit[0] + 1) if len(hit) else math.inf


# ------------------------------------------------------------------ the run


@dataclass
class Job:
    task: str
    strategy: str
    seeds: list[int]
    concurrency: int
    space: Any  # the LCBench SearchSpace, read from the shipped file once, in the main process
    budget: int = EPOCHS * FULL_TRIALS

    @property
    def key(self) -> str:
        """The job's file name: with the space's tune settings, so that a run of a variant
        (``--tune``) never hands its searches to a later ``--resume`` of other settings."""
        settings = zlib.crc32(repr(self.space.tune).encode())
        return f"{self.task}-{self.strategy}-{len(self.seeds)}-{self.concurrency}-{settings:08x}"


_SERVERS: Servers | None = None


def run_job(job: Job) -> dict:
    """Every search of one (task, strategy): the trials' records, and seconds taken."""
    import warnings

    import optuna
    import torch

    global _SERVERS
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")  # e.g. Ray's note that a GP suggestion took over 1 s
    # one thread per process: with torch's default threads competing (2 processes on 2
    # cores) the GP sampler's small fits ran over 10x slower
    torch.set_num_threads(1)
    _SERVERS = _SERVERS or Servers()
    space = job.space
    curve_of = _SERVERS.surrogate().objective(job.task)
    searches, start = [], time.perf_counter()
    for seed in job.seeds:
        strategy = STRATEGIES[job.strategy](space, seed, job.concurrency, _SERVERS)
        trials = run_search(strategy, curve_of, job.budget, job.concurrency)
        if isinstance(strategy, DEHBStrategy):
            strategy.close()
        searches.append([dataclasses.asdict(t) for t in trials])
    seconds = time.perf_counter() - start
    return {"task": job.task, "strategy": job.strategy, "searches": searches, "seconds": seconds}


def run(args: argparse.Namespace) -> int:
    import warnings

    warnings.simplefilter("ignore")  # Optuna's experimental-feature notices, per search
    tasks = list(args.tasks or (QUICK_TASKS if args.quick else TASKS))
    if refused := [t for t in tasks if t in HELD_OUT]:
        print(f"error: tasks {refused} are held out for an independent check", file=sys.stderr)
        return 2
    seeds = list(range(args.searches or (3 if args.quick else 20)))
    changes = json.loads(args.tune) if args.tune else {}
    space = lcbench_space(args.space, **changes)
    jobs = [Job(t, s, seeds, args.concurrency, space) for t in tasks for s in args.strategies]
    done = run_jobs(jobs, args.workers, args.resume)
    servers, n = Servers(), 5_000 if args.quick else 20_000  # the reference's random sample
    refs = {
        t: reference(servers.surrogate(), t, [d for d in done if d["task"] == t], n) for t in tasks
    }
    servers.close()
    doc = summarize(done, refs, jobs[0].budget, args)
    out = Path(args.json) if args.json else None
    write(doc, out)
    return 0


def run_jobs(jobs: list[Job], workers: int, resume: bool = False) -> list[dict]:
    """Every job's searches, each kept in bench/results/lcbench_jobs/ as it ends; with
    ``resume``, the jobs kept there by an earlier run of the same settings are not rerun."""
    import multiprocessing as mp

    from tqdm import tqdm

    from bench.common import RESULTS

    folder = RESULTS / "lcbench_jobs"
    folder.mkdir(parents=True, exist_ok=True)
    kept = {
        j.key: json.loads((folder / f"{j.key}.json").read_text())
        for j in jobs
        if resume and (folder / f"{j.key}.json").is_file()
    }
    todo = [j for j in jobs if j.key not in kept]
    with mp.get_context("spawn").Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = pool.imap_unordered(run_job, todo) if pool else map(run_job, todo)
        for result in tqdm(results, total=len(todo), desc="lcbench", unit="job"):
            job = next(
                j for j in todo if (j.task, j.strategy) == (result["task"], result["strategy"])
            )
            (folder / f"{job.key}.json").write_text(json.dumps(result))
            kept[job.key] = result
    return [kept[j.key] for j in jobs]


def reference(surrogate: Surrogate, task: str, done: list[dict], n: int = 20_000) -> Reference:
    """The task's scale: a random sample's median and mean; the best of it and of every
    full trial of the run."""
    sample = sample_values(surrogate, task, n)
    best = max(
        [float(sample.max())]
        + [t["value"] for d in done for s in d["searches"] for t in s if t["complete"]]
    )
    return Reference(best, float(np.median(sample)), float(sample.mean()))


def summarize(done: list[dict], refs: dict[str, Reference], budget: int, args) -> dict:
    """Per task and strategy: regret at 25/50/100% of the budget (mean, sem), and the
    compute at which its mean regret reaches random search's final mean regret."""
    cells: dict[str, dict[str, dict]] = {}
    for d in done:
        ref = refs[d["task"]]
        curves = np.array(
            [regret_curve([Finished(**t) for t in s], ref, budget) for s in d["searches"]]
        )
        cells.setdefault(d["task"], {})[d["strategy"]] = {
            "mean_curve": curves.mean(axis=0),
            "at": {
                str(p): [
                    float(curves[:, int(budget * p) - 1].mean()),
                    sem(curves[:, int(budget * p) - 1]),
                ]
                for p in (0.25, 0.5, 1.0)
            },
            "full_trials": float(np.mean([sum(t["complete"] for t in s) for s in d["searches"]])),
            "trials": float(np.mean([len(s) for s in d["searches"]])),
            "seconds": d["seconds"],
        }
    for per in cells.values():
        target = per["random"]["at"]["1.0"][0] if "random" in per else math.nan
        for cell in per.values():
            cell["compute_to_random_final"] = compute_to_reach(cell.pop("mean_curve"), target)
            cell["speedup"] = budget / cell["compute_to_random_final"]
    return {
        "budget_epochs": budget,
        "concurrency": args.concurrency,
        "searches": len(done[0]["searches"]) if done else 0,
        "space": str(Path(args.space).resolve().relative_to(REPO)),
        "tune_changes": json.loads(args.tune) if args.tune else {},
        "references": {t: dataclasses.asdict(r) for t, r in refs.items()},
        "tasks": cells,
        "goal": goal(cells),
    }


def sem(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def goal(cells: dict[str, dict[str, dict]]) -> dict:
    """Issue 28's goal for "shipped": the geometric mean of its speed-up over random search
    (compute to random's final regret), and the tasks where its mean final regret is below
    every other strategy's."""
    if not all("shipped" in per and "random" in per for per in cells.values()):
        return {}
    speedups = [per["shipped"]["speedup"] for per in cells.values()]
    best = [
        task
        for task, per in cells.items()
        if all(
            per["shipped"]["at"]["1.0"][0] < c["at"]["1.0"][0]
            for n, c in per.items()
            if n != "shipped"
        )
    ]
    finite = all(math.isfinite(s) and s > 0 for s in speedups)
    return {
        "geomean_speedup": float(np.exp(np.mean(np.log(speedups)))) if finite else 0.0,
        "best_on": best,
        "tasks": len(cells),
    }


def write(doc: dict, out: Path | None) -> None:
    from bench.common import emit

    g = doc["goal"]
    line = (
        f"shipped: {g.get('geomean_speedup', math.nan):.2f}x random's compute to its final "
        f"regret (geometric mean); best mean final regret on {len(g.get('best_on', []))} of "
        f"{g.get('tasks', 0)} tasks"
    )
    emit(RESULT, line, doc)
    if out is not None:
        out.write_text(json.dumps(doc, indent=2, default=float))
    print(markdown_table(doc))


# ------------------------------------------------------------------ the table


def markdown_table(doc: dict) -> str:
    """Two tables: per strategy, the means over tasks and the goal's figures; per task and
    strategy, regret at 25/50/100% of the budget (mean ± sem) and compute to random's final
    regret."""
    tasks = list(doc["tasks"])
    names = list(doc["tasks"][tasks[0]])
    lines = [
        "| strategy | mean regret 25% | 50% | 100% | compute to random's final (geo. mean "
        "speed-up) | tasks with the lowest final regret | trials / full trials per search |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        cells = [doc["tasks"][t][name] for t in tasks]
        means = [np.mean([c["at"][p][0] for c in cells]) for p in ("0.25", "0.5", "1.0")]
        lowest = sum(
            min(doc["tasks"][t], key=lambda n: doc["tasks"][t][n]["at"]["1.0"][0]) == name
            for t in tasks
        )
        counts = f"{np.mean([c['trials'] for c in cells]):.0f} / "
        counts += f"{np.mean([c['full_trials'] for c in cells]):.0f}"
        lines.append(
            f"| {name} | "
            + " | ".join(f"{m:.3f}" for m in means)
            + f" | {geomean([c['speedup'] for c in cells])} | {lowest} of {len(tasks)} | {counts} |"
        )
    lines += ["", "| task | strategy | regret 25% | 50% | 100% | compute to random's final |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for t in tasks:
        for name in names:
            c = doc["tasks"][t][name]
            at = [f"{c['at'][p][0]:.3f} ± {c['at'][p][1]:.3f}" for p in ("0.25", "0.5", "1.0")]
            epochs = c["compute_to_random_final"]
            reach = (
                f"{epochs:.0f} ({c['speedup']:.2f}x)" if math.isfinite(epochs) else "not reached"
            )
            lines.append(f"| {t} | {name} | " + " | ".join(at) + f" | {reach} |")
    return "\n".join(lines)


def geomean(values: list[float]) -> str:
    if any(v <= 0 or not math.isfinite(v) for v in values):
        return f"< 1x on {sum(v <= 0 or not math.isfinite(v) for v in values)} tasks"
    return f"{math.exp(np.mean(np.log(values))):.2f}x"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="every strategy on every task")
    r.add_argument("--quick", action="store_true", help="2 tasks, 3 searches")
    r.add_argument("--tasks", nargs="+", help=f"LCBench task ids (default: {' '.join(TASKS)})")
    r.add_argument("--searches", type=int, help="searches per strategy and task (default 20)")
    r.add_argument("--strategies", nargs="+", default=list(DEFAULT), choices=list(STRATEGIES))
    r.add_argument("--concurrency", type=int, default=4, help="trials at a time (2 or 4)")
    r.add_argument("--space", type=Path, default=SHIPPED_SPACE, help="the shipped settings")
    r.add_argument("--tune", help="JSON of TuneSettings changes, e.g. '{\"rungs\": [9]}'")
    r.add_argument("--workers", type=int, default=1, help="processes")
    r.add_argument("--json", help="also write the results here")
    r.add_argument("--resume", action="store_true", help="keep the jobs an earlier run ended")
    m = sub.add_parser("markdown", help="the last run's table")
    m.add_argument("--json", help="a results file (default: bench/results/lcbench.json)")
    args = parser.parse_args(argv)
    if args.cmd == "markdown":
        from bench.common import RESULTS

        path = Path(args.json) if args.json else RESULTS / f"{RESULT}.json"
        print(markdown_table(json.loads(path.read_text())))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
