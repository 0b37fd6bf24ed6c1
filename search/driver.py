"""The search driver: the stages of a search, in order.

1. the run directory and its records (``search.rundir``);
2. resume checks and the stop signals (``search.resume``);
3. Ray, what the trials read (``search.assets``), and the Tuner: Optuna's sampler and ASHA
   (``search.launch``, ``search.strategy``), or on resume the restored Tuner
   (``search.resume``);
4. the search (``Tuner.fit``), then the confirmation: the top configurations trained again
   with more seeds, and the winners' scoring runs (``search.confirm``);
5. the wrap-up (``finish``): ``trials.csv`` (``search.table``), test scoring, the only time
   test data is read (``search.scoring``, or ``search.confirm.wrap_up``), ``best/<backbone>/``
   with the resolved config and checkpoint, and the report (``analysis.report``).

A search stopped by Ctrl-C or SIGTERM raises ``SearchStopped`` instead and writes none of
the wrap-up's files: ``--resume`` goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from handreid.errors import HandReIDError
from search.assets import prepare_assets
from search.launch import build_tuner, check_resources, init_ray, use_study_file
from search.resume import (
    SearchStopped,
    check_resume,
    fail_lost_trials,
    restore_tuner,
    set_aside_orphans,
    set_aside_stored_orphans,
    stop_signals,
)
from search.rundir import (
    SearchOptions,
    experiment_path,
    fetch_run_files,
    is_uri,
    local_run_dir,
    mirror_results,
    pin_run_dir,
    read_search_meta,
    study_name,
    study_storage,
    write_search_meta,
)
from search.scoring import evaluate_top_k
from search.space import SearchSpace
from search.studies import write_group_studies
from search.table import TEST_COLUMNS, search_table, top_k, write_table
from search.tune_state import search_finished

log = logging.getLogger(__name__)


def run_search(space: SearchSpace, opts: SearchOptions) -> pd.DataFrame:
    """Run (or resume) the search, then write trials.csv and best/. Returns the trial table.
    Raises ``SearchStopped`` when a signal ended it early (nothing is written then)."""
    from ray import tune

    opts = pin_run_dir(opts)
    path = experiment_path(opts)
    if opts.resume:
        if is_uri(opts.storage):
            fetch_run_files(opts, path)
        check_resume(space, opts)
    exists = tune.Tuner.can_restore(path)
    if opts.resume and not exists:
        raise HandReIDError(f"nothing to resume at {path}")
    if not opts.resume and exists:
        raise HandReIDError(f"a search already exists at {path}: pass --resume or a new --name")
    use_study_file(opts)
    init_ray(opts.address, num_gpus=None)
    check_resources(space, opts)
    run_dir = local_run_dir(opts)
    if not (opts.resume and (run_dir / "search.json").is_file()):
        write_search_meta(space, opts)
    from search.confirm import run_confirmation

    with stop_signals() as stop:
        prepare_assets(space, opts)  # what every trial reads, once, where every node sees it
        if opts.resume:
            tuner = restore_tuner(space, opts, path)
        else:
            tuner = build_tuner(space, opts)
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:  # a second signal cut Tune's last state snapshot short
            grid = None
        if grid is None or not search_finished(path, read_search_meta(run_dir)["num_samples"]):
            raise SearchStopped(stop.signum, path)
        confirmed = run_confirmation(space, opts, grid, stop)  # None: confirmation off
    if is_uri(opts.storage):
        set_aside_stored_orphans(path, grid)
        mirror_results(path, run_dir)
    return finish(space, opts, grid, confirmed)


def finish(space: SearchSpace, opts: SearchOptions, grid, confirmed=None) -> pd.DataFrame:
    """The wrap-up. ``confirmed``: the confirmation runs (``search.confirm``), or None when
    confirmation is off: then the top-k trials per backbone are scored, as before it."""
    from search import confirm
    from search.scratch import drop_scratch

    run_dir = local_run_dir(opts)
    set_aside_orphans(run_dir, grid)
    table = search_table(space, grid)
    results = {Path(r.path).name: r for r in grid}
    keep = set(top_k(table, max(space.tune.top_k, space.tune.confirm.top_k))["trial_id"])
    if confirmed is None:
        confirm.drop_summary(run_dir)
        tests = evaluate_top_k(space, opts, table, results, run_dir)
    else:
        table = pd.concat([table, confirm.run_table(space, confirmed)], ignore_index=True)
        tests = confirm.wrap_up(space, opts, table, results, confirmed, run_dir)
        keep |= confirm.kept_states(table, confirmed)
    drop_scratch(opts, keep)
    for col in TEST_COLUMNS:
        table[col] = [tests.get(t, {}).get(col.removeprefix("test_")) for t in table["trial_id"]]
    fail_lost_trials(run_dir)  # none left after a resume, unless a tell failed
    if space.group_key():  # per-backbone importance and history in optuna-dashboard
        write_group_studies(study_storage(run_dir), study_name(opts), *space.group_key())
    write_table(table, run_dir / "trials.csv")
    write_report(run_dir)
    return table


def write_report(run_dir: Path) -> None:
    try:
        from analysis.report import write_all
    except ImportError:
        return
    try:
        write_all([run_dir], run_dir / "report")
    except HandReIDError as err:
        log.warning("report not written: %s", err)
