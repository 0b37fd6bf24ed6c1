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
from handreid.config import parse_set_args
from handreid.errors import HandReIDError

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="handreid-search", description=__doc__)
    p.add_argument("--space", required=True, help="search-space YAML (spaces/*.yml)")
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
    p.add_argument("--gpus-per-trial", type=float, help="may be fractional, e.g. 0.25")
    p.add_argument("--no-stage1-cache", action="store_true", help="recompute stage 1 per trial")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override a base-config value for every trial",
    )
    p.add_argument(
        "--verbose", action="store_true", help="Ray Tune's live trial tables and its log lines"
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar or per-trial lines, only the end"
    )
    return p


def check_args(args) -> None:
    for flag in ("num_samples", "max_concurrent"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise HandReIDError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise HandReIDError("--cpus-per-trial must be > 0")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise HandReIDError("--gpus-per-trial must be >= 0")
    if args.name and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
        raise HandReIDError(f"--name may use letters, digits, '.', '_' and '-' only: {args.name!r}")
    if args.data_root and not Path(args.data_root).is_dir():
        raise HandReIDError(f"--data-root {args.data_root}: not a folder")
    if args.retry_failed and not args.resume:
        raise HandReIDError("--retry-failed applies to --resume only")


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
    if table.empty:
        return "no trial ran"
    failed = table[table["status"] == "failed"].sort_values("trial_id")
    if len(failed) < len(table):
        return None
    return f"all {len(table)} trials failed; first failure: {failed['fail_reason'].iloc[0]}"


def print_best(table, metric: str) -> None:
    from search.driver import top_k

    cols = ["backbone", "trial_id", "status", "epochs", f"best_{metric}", "test_rank1", "test_mAP"]
    best = top_k(table, 1)
    print(f"\nbest trial per backbone (complete trials first, chosen by {metric}; test scored):")
    print(best[[c for c in cols if c in best]].to_string(index=False, float_format="{:.2f}".format))
    counts = table["status"].value_counts().to_dict()
    print(f"trials: {len(table)} ({', '.join(f'{v} {k}' for k, v in counts.items())})")


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
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("HANDREID_RAY_LOG_LEVEL", "WARNING")


def resume_command(argv: list[str]) -> str:
    """The command that continues this search: the same arguments plus --resume."""
    return shlex.join(["handreid-search", *(a for a in argv if a != "--resume"), "--resume"])


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    setup_logging()
    check_args(args)
    from search.space import load_space

    overrides = parse_set_args(args.overrides)
    sets = list(overrides)
    if args.data_root:
        overrides["data.root"] = str(Path(args.data_root).resolve())
    space = load_space(args.space, overrides)
    check_sets(space, sets)
    for line in space.warnings:
        print(f"warning: {line}")
    # Tune's own output (its experiment box, live tables, log lines) only with --verbose
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1" if args.verbose else "0")
    if not args.verbose:
        quiet_libraries()
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from search.driver import (
        SearchOptions,
        SearchStopped,
        default_storage,
        is_uri,
        local_run_dir,
        pin_run_dir,
        run_search,
    )

    storage = args.storage or default_storage()
    opts = SearchOptions(
        name=args.name or Path(args.space).stem,
        storage=storage if is_uri(storage) else str(Path(storage).expanduser().resolve()),
        run_dir=args.run_dir,
        address=args.address,
        resume=args.resume,
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        stage1_cache=not args.no_stage1_cache,
        verbose=1 if args.verbose else 0,
        progress=not args.quiet,
        retry_failed=args.retry_failed,
    )
    opts = pin_run_dir(opts)  # absolute from here on; run_search keeps it
    try:
        table = run_search(space, opts)
    except SearchStopped as stop:  # nothing scored or written: the search goes on with this
        print(f"{stop}; resume with: {resume_command(argv)}", file=sys.stderr)
        return stop.exit_code
    failure = all_failed(table)
    if failure:  # exit code 1: the input was fine, the run was not (a Ray job reads FAILED)
        print(f"error: {failure} (details: {local_run_dir(opts)})", file=sys.stderr)
        return 1
    print_best(table, space.tune.metric)
    print_places(space, local_run_dir(opts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
