"""``handreid-search``: Ray Tune + Optuna over the two-stage training, pruned by ASHA."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys
from pathlib import Path

from handreid.cli_util import one_line_errors, setup_logging
from handreid.errors import HandReIDError

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="handreid-search", description=__doc__)
    p.add_argument("--space", help="search-space YAML (spaces/*.yml); required unless --confirm")
    p.add_argument("--num-samples", type=int, help="trials to run (default: the space's)")
    p.add_argument("--data-root", help="11k-layout dataset (default: the base config's)")
    p.add_argument(
        "--storage",
        help="results folder or pyarrow URI (default: $HANDREID_STORAGE, else the runs folder: "
        "$HANDREID_RUNS, else ./runs, or ~/handreid-runs in a Ray job)",
    )
    p.add_argument(
        "--run-dir",
        help="with a URI --storage: the local folder for trials.csv, study.db, best/ and the "
        "report (default: <runs folder>/<name>; a resume finds it in the search's search.json)",
    )
    p.add_argument("--name", help="search name (default: the space file's name)")
    p.add_argument("--address", help="join a Ray cluster ('auto' or host:port); default: local")
    p.add_argument(
        "--resume", action="store_true", help="continue a stopped or killed search, as started"
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: run the trials that ended in an error again (off by default)",
    )
    p.add_argument("--max-concurrent", type=int, help="trials running at once")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument(
        "--gpus-per-trial",
        type=gpus_per_trial,
        help="may be fractional, e.g. 0.25; auto: each trial's share from its configuration's "
        "memory estimate (the real spaces' default)",
    )
    p.add_argument(
        "--gpu-memory",
        type=float,
        metavar="GIB",
        help="memory of the cluster's smallest GPU, for auto and --plan (default: asked of "
        "the GPUs; --plan without a GPU: 80)",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="start nothing: print the trials, expected epochs, memory per trial, trials per "
        "GPU, wall time and GPU-hours for the cluster (or --gpus N)",
    )
    p.add_argument("--gpus", type=int, metavar="N", help="with --plan: plan for N GPUs")
    p.add_argument(
        "--gpu-tflops",
        type=float,
        help="with --plan: a GPU's achieved bf16 TFLOP/s with trials packed (default: assumed)",
    )
    p.add_argument(
        "--trial-tflops",
        type=float,
        help="with --plan: one trial's achieved TFLOP/s with a GPU to itself (default: assumed)",
    )
    p.add_argument("--no-stage1-cache", action="store_true", help="recompute stage 1 per trial")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override a base-config value for every trial",
    )
    p.add_argument(
        "--confirm-seeds",
        type=int,
        metavar="N",
        help="after the search, train its top configurations (tune.confirm.top_k per "
        "backbone) with N more seeds and pick the best mean (default: the space's "
        "tune.confirm.seeds; 0: off)",
    )
    p.add_argument(
        "--score-seeds",
        type=int,
        metavar="N",
        help="train each backbone's confirmed winner with N fresh seeds, the only runs scored "
        "on the test protocol (default: the space's tune.confirm.score_seeds)",
    )
    p.add_argument(
        "--confirm",
        metavar="RUN_DIR",
        help="confirm a finished search (its run directory), or extend its confirmation to "
        "more --confirm-seeds; the search's own settings come from RUN_DIR/search.json",
    )
    p.add_argument(
        "--verbose", action="store_true", help="Ray Tune's live trial tables and its log lines"
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar or per-trial lines, only the end"
    )
    return p


# flags that name or shape the search: with --confirm they come from RUN_DIR/search.json
SEARCH_FLAGS = ("space", "name", "storage", "run_dir", "num_samples", "max_concurrent")


def check_args(args) -> None:
    if args.confirm_seeds is not None and args.confirm_seeds < 0:
        raise HandReIDError(
            f"--confirm-seeds must be >= 0 (0: no confirmation), got {args.confirm_seeds}"
        )
    from search.space import SCORE_SEED_OFFSET

    if args.confirm_seeds is not None and args.confirm_seeds >= SCORE_SEED_OFFSET:
        raise HandReIDError(
            f"--confirm-seeds must be < {SCORE_SEED_OFFSET} (the scoring seeds start there), "
            f"got {args.confirm_seeds}"
        )
    if args.score_seeds is not None and args.score_seeds < 1:
        raise HandReIDError(f"--score-seeds must be >= 1, got {args.score_seeds}")
    if args.confirm:
        given = [f for f in SEARCH_FLAGS if getattr(args, f) is not None]
        given += ["set"] * bool(args.overrides) + ["data_root"] * bool(args.data_root)
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise HandReIDError(f"{flag}: --confirm takes the search's settings from its run")
        if args.confirm_seeds == 0:
            raise HandReIDError("--confirm with --confirm-seeds 0 has nothing to run")
    elif not args.space:
        raise HandReIDError("--space is required (or --confirm RUN_DIR)")
    for flag in ("num_samples", "max_concurrent"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise HandReIDError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise HandReIDError("--cpus-per-trial must be > 0")
    if args.gpus is not None and not args.plan:
        raise HandReIDError("--gpus applies to --plan only (a search uses the cluster's)")
    if args.gpus is not None and args.gpus < 0:
        raise HandReIDError(f"--gpus must be >= 0, got {args.gpus}")
    if args.gpus_per_trial not in (None, "auto") and args.gpus_per_trial < 0:
        raise HandReIDError("--gpus-per-trial must be >= 0")
    if args.gpu_memory is not None and args.gpu_memory <= 0:
        raise HandReIDError(f"--gpu-memory must be > 0 GiB, got {args.gpu_memory}")
    if args.name and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
        raise HandReIDError(f"--name may use letters, digits, '.', '_' and '-' only: {args.name!r}")
    if args.data_root and not Path(args.data_root).is_dir():
        raise HandReIDError(f"--data-root {args.data_root}: not a folder")
    if args.retry_failed and not args.resume:
        raise HandReIDError("--retry-failed applies to --resume only")
    if args.retry_failed and args.confirm:  # it would rerun failed trials of a finished search
        raise HandReIDError("--retry-failed and --confirm: resume the search first, then confirm")


def gpus_per_trial(text: str) -> float | str:
    """``--gpus-per-trial``: a number (>= 0: ``check_args``), or auto."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def check_paths(space) -> None:
    """Every input path the trials read exists (they are absolute: ``load_space``)."""
    from handreid.config import missing_paths

    missing = missing_paths(space.trial_config({}))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise HandReIDError(f"{space.source}: {missing[0]}{more}")


def print_plan(space, args) -> None:
    """``--plan``: the cost of the search on the cluster this machine sees (or --gpus)."""
    from handreid.config import missing_paths
    from search.plan import default_throughput, make_plan, plan_lines, seen_gpus

    gpus, gpu_bytes, where = seen_gpus(args.gpus, args.gpu_memory, args.address)
    plan = make_plan(
        space,
        gpus=gpus,
        gpu_bytes=gpu_bytes,
        asked=args.gpus_per_trial if args.gpus_per_trial is not None else space.tune.gpus_per_trial,
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        confirm_seeds=args.confirm_seeds,
        score_seeds=args.score_seeds,
        throughput=default_throughput(args.gpu_tflops, args.trial_tflops),
    )
    print(f"GPUs: {where}")
    for line in missing_paths(space.trial_config({})):
        print(f"note: {line} here (a search would refuse to start)")
    for line in plan_lines(plan):
        print(line)


def check_sets(space, keys) -> None:
    """A --set of a key the space sets in every trial would be dropped without a word."""
    owned = space.owned_keys()
    for key in keys:
        if key in owned:
            raise HandReIDError(
                f"{space.source}: --set {key}: {owned[key]}, so every trial would overwrite "
                "the value; change the space file instead"
            )


def all_failed(table) -> str | None:
    """Why the search produced nothing, when none of its trials ended well."""
    if "role" in table:
        table = table[table["role"] == "search"]
    if table.empty:
        return "no trial ran"
    failed = table[table["status"] == "failed"].sort_values("trial_id")
    if len(failed) < len(table):
        return None
    return f"all {len(table)} trials failed; first failure: {failed['fail_reason'].iloc[0]}"


def print_best(table, metric: str, run_dir: Path | None = None) -> None:
    from search.table import top_k

    runs = table[table["role"] == "confirm"] if "role" in table else table.iloc[:0]
    if len(runs) and run_dir is not None and (run_dir / "confirm.csv").is_file():
        print_confirmed(metric, run_dir)
    else:
        cols = ["backbone", "trial_id", "status", "epochs", f"best_{metric}"]
        best = top_k(table, 1)
        print(
            f"\nbest trial per backbone (complete trials first, chosen by {metric}; test scored):"
        )
        best = best[[c for c in [*cols, "test_rank1", "test_mAP"] if c in best]]
        print(best.to_string(index=False, float_format="{:.2f}".format))
    search = table[table["role"] == "search"] if "role" in table else table
    counts = search["status"].value_counts().to_dict()
    print(f"trials: {len(search)} ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    scoring = table[table["role"] == "score"] if "role" in table else table.iloc[:0]
    for what, part in (("confirmation", runs), ("scoring", scoring)):
        if len(part):
            counts = part["status"].value_counts().to_dict()
            said = ", ".join(f"{v} {k}" for k, v in counts.items())
            print(f"{what} runs: {len(part)} ({said})")


def print_confirmed(metric: str, run_dir: Path) -> None:
    """Each backbone's confirmed winner: its mean over seeds, and its test scores (mean over
    seeds x splits, from best/<backbone>/test_metrics.json)."""
    import json

    import pandas as pd

    configs = pd.read_csv(run_dir / "confirm.csv", dtype={"config_id": str})
    rows = []
    for w in configs[configs["winner"]].to_dict("records"):
        path = run_dir / "best" / w["backbone"] / "test_metrics.json"
        test = json.loads(path.read_text()) if path.is_file() else {}
        rows.append(
            {
                "backbone": w["backbone"],
                "config_id": w["config_id"],
                "seeds": w["runs"],
                f"{metric} mean": w["val_mean"],
                f"{metric} std": w["val_std"],
                "search run": w["search_val"],
                "scoring seeds": len([e for e in test.get("seeds", []) if "error" not in e]),
                "test_rank1": test.get("rank1"),
                "test_mAP": test.get("mAP"),
            }
        )
    print(
        f"\nconfirmed winner per backbone (best mean {metric} over the seeds that chose it; "
        "test: fresh scoring seeds x splits, seeds that chose nothing):"
    )
    print(pd.DataFrame(rows).to_string(index=False, float_format="{:.2f}".format))


def print_confirmation(run_dir: Path) -> None:
    """The confirmation summary of the analysis (tables, winners, the verdict)."""
    try:
        from analysis.confirm import summary_lines
    except ImportError:
        summary_lines = winner_lines
    for line in summary_lines(run_dir):
        print(line)


def winner_lines(run_dir: Path) -> list[str]:
    """A stand-in for analysis.confirm.summary_lines: confirm.csv's winners."""
    import pandas as pd

    path = run_dir / "confirm.csv"
    if not path.is_file():
        return []
    configs = pd.read_csv(path, dtype={"config_id": str})
    return [
        f"{w.backbone}: confirmed winner {w.config_id} ({w.runs} seeds, mean {w.val_mean:.2f} "
        f"± {w.val_std:.2f})"
        for w in configs[configs["winner"]].itertuples()
    ]


def print_places(space, run_dir: Path) -> None:
    """Where the user finds what the search read and wrote."""
    from handreid.data.build import resolve_root

    data = space.base.data
    kind = "11k-layout" if (data.root or data.prepared) else "generated synthetic hands"
    print(f"data:          {resolve_root(data)} ({kind})")
    print(f"run directory: {run_dir} (trials.csv, best/, study.db)")
    report = run_dir / "report" / "report.html"
    if report.is_file():
        print(f"report:        {report}")
    print(f"dashboard:     optuna-dashboard sqlite:///{run_dir / 'study.db'}")


def quiet_libraries() -> None:
    """Leave the terminal to the search's own lines: Ray, Tune and Optuna say only warnings,
    and Optuna's notes on its experimental features are not repeated to every user."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Ray's note on a slow define-by-run: there the sampler fits its model (tune.sampler: gp)
    warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space`")
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("HANDREID_RAY_LOG_LEVEL", "WARNING")


def resume_command(argv: list[str]) -> str:
    """The command that continues this search: the same arguments plus --resume (a
    --confirm continues as it is)."""
    if "--confirm" in argv or any(a.startswith("--confirm=") for a in argv):
        return shlex.join(["handreid-search", *argv])
    return shlex.join(["handreid-search", *(a for a in argv if a != "--resume"), "--resume"])


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = None
    try:
        args = build_parser().parse_args(argv)
        setup_logging()
        check_args(args)
        check_saved(args)  # before the space, torch and Ray load: answers at once
        return search(args, argv)
    except KeyboardInterrupt:  # at any moment: say what a rerun needs
        print(interrupted(args, argv), file=sys.stderr)
        return 130


def search(args, argv: list[str]) -> int:
    space, name, storage, run_dir = search_target(args)
    for line in space.warnings:
        print(f"warning: {line}")
    if args.plan:  # nothing starts
        print_plan(space, args)
        return 0
    check_paths(space)
    # Tune's own output (its experiment box, live tables, log lines) only with --verbose
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1" if args.verbose else "0")
    if not args.verbose:
        quiet_libraries()
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from search.driver import run_search
    from search.resume import SearchStopped
    from search.rundir import SearchOptions, default_storage, is_uri, local_run_dir, pin_run_dir

    storage = storage or default_storage()
    opts = SearchOptions(
        name=name,
        storage=storage if is_uri(storage) else str(Path(storage).expanduser().resolve()),
        run_dir=run_dir,
        address=args.address,
        resume=args.resume or bool(args.confirm),
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        gpu_memory=args.gpu_memory,
        stage1_cache=not args.no_stage1_cache,
        verbose=1 if args.verbose else 0,
        progress=not args.quiet,
        retry_failed=args.retry_failed,
        confirm_seeds=args.confirm_seeds,
        score_seeds=args.score_seeds,
    )
    opts = pin_run_dir(opts)  # absolute from here on; run_search keeps it
    if args.confirm:
        check_confirmable(space, opts, args.confirm)
    try:
        table = run_search(space, opts)
    except SearchStopped as stop:  # nothing scored or written: the search goes on with this
        print(f"{stop}; resume with: {resume_command(argv)}", file=sys.stderr)
        return stop.exit_code
    failure = all_failed(table)
    if failure:  # exit code 1: the input was fine, the run was not (a Ray job reads FAILED)
        print(f"error: {failure} (details: {local_run_dir(opts)})", file=sys.stderr)
        return 1
    print_best(table, space.tune.metric, local_run_dir(opts))
    print_confirmation(local_run_dir(opts))
    print_places(space, local_run_dir(opts))
    return 0


def experiment_dir(args) -> Path | None:
    """The search's experiment folder as the flags name it, without loading the space;
    None with URI storage (not looked up here) or with --confirm (a finished search)."""
    from search.rundir import default_storage, is_uri

    storage = args.storage or default_storage()
    if args.confirm or is_uri(storage):
        return None
    return Path(storage).expanduser().resolve() / (args.name or Path(args.space).stem)


def has_saved_state(path: Path) -> bool:
    from search.tune_state import TUNER_FILE

    return (path / TUNER_FILE).is_file()


def check_saved(args) -> None:
    """``--resume`` of a search that saved nothing: said at once, not after Ray starts."""
    path = experiment_dir(args) if args.resume else None
    if path is not None and not has_saved_state(path):
        raise HandReIDError(
            f"nothing to resume at {path} (no saved search there); start the search without "
            "--resume"
        )


def interrupted(args, argv: list[str]) -> str:
    """The line for a Ctrl-C: the resume command once Tune has saved the search, else that
    nothing was saved and the command that starts it again (``args`` None: interrupted
    while the arguments were read, so this process saved nothing)."""
    if args is None:
        again = shlex.join(["handreid-search", *argv])
        return f"interrupted before the search started (nothing saved); run again: {again}"
    path = experiment_dir(args)
    if path is None:
        return f"interrupted; resume with: {resume_command(argv)}"
    if has_saved_state(path):
        return f"interrupted; the search is saved in {path}; resume with: {resume_command(argv)}"
    again = shlex.join(["handreid-search", *(a for a in argv if a != "--resume")])
    return f"interrupted before anything was saved (nothing in {path}); start again with: {again}"


def search_target(args):
    """The space, and the search's name, storage (None: the default) and run directory:
    from the flags, or with --confirm from the run directory's search.json."""
    from search.space import load_space

    if args.confirm:
        space, meta = confirm_target(args.confirm)
        return space, meta["name"], meta["storage"], meta["run_dir"]
    from handreid.config import parse_set_args

    overrides = parse_set_args(args.overrides)
    sets = list(overrides)
    if args.data_root:
        overrides["data.root"] = str(Path(args.data_root).resolve())
    space = load_space(args.space, overrides)
    check_sets(space, sets)
    return space, args.name or Path(args.space).stem, args.storage, args.run_dir


def confirm_target(run_dir: str):
    """The space and the recorded settings (search.json) of the search in ``run_dir``."""
    import json

    from search.space import load_space

    meta_path = Path(run_dir).expanduser() / "search.json"
    if not meta_path.is_file():
        raise HandReIDError(
            f"--confirm {run_dir}: not a run directory of handreid-search (no search.json)"
        )
    try:
        meta = json.loads(meta_path.read_text())
        space_file = Path(meta.get("space_file") or meta["space"])
        meta["name"], meta["storage"], meta["run_dir"]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise HandReIDError(
            f"--confirm {run_dir}: its search.json is unreadable ({err!r})"
        ) from None
    if not space_file.is_file():
        raise HandReIDError(
            f"--confirm {run_dir}: the search's space file {space_file} is gone; put it back"
        )
    recorded = Path(meta["run_dir"]).resolve()
    if recorded != meta_path.parent.resolve():
        raise HandReIDError(
            f"--confirm {run_dir}: its search.json belongs to the run directory {recorded}"
        )
    return load_space(space_file, meta.get("fixed") or {}), meta


def check_confirmable(space, opts, run_dir: str) -> None:
    """A finished search (as Tune saved it), and seeds to confirm it with."""
    from ray import tune

    from search.confirm import confirm_seeds
    from search.rundir import experiment_path, read_search_meta
    from search.tune_state import search_finished

    path = experiment_path(opts)
    meta = read_search_meta(Path(opts.run_dir))
    try:
        finished = tune.Tuner.can_restore(path) and search_finished(path, meta["num_samples"])
    except Exception:  # no state Tune can read: not a search that ran
        finished = False
    if not finished:
        raise HandReIDError(
            f"--confirm {run_dir}: the search there has not finished; continue it with "
            "--resume first"
        )
    if confirm_seeds(space, opts) == 0:
        raise HandReIDError(
            f"--confirm {run_dir}: {space.source} sets tune.confirm.seeds: 0; pass "
            "--confirm-seeds N"
        )
    if space.tune.confirm.top_k == 0:
        raise HandReIDError(f"--confirm {run_dir}: {space.source} sets tune.confirm.top_k: 0")


if __name__ == "__main__":
    raise SystemExit(main())
