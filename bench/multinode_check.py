"""The checks of bench/ray_up_multinode.sh on a finished search's folder on the shared storage.

    python bench/multinode_check.py RUN_DIR WORKER_IP NUM_SAMPLES [KILLED_FILE]

- where each trial's epochs ran (``node_ip`` of its ``result.json`` rows): at least one
  trial's epochs on the worker;
- nothing lost or duplicated: ``trials.csv``'s search rows are the study's trials, one each,
  each trial folder's epochs are reported once each (a retry after the worker's kill
  continues from the last checkpoint, so no epoch twice);
- the worker's kill (``KILLED_FILE``: its time): which trials were on the worker then, and
  where their later epochs ran;
- how soon a trial placed on the worker started training: from the trial's start (its
  ``params.json``, written by the driver as the trial starts) to its first epoch's start
  (the first report's time less the epoch's own ``epoch_seconds``): at most 60 s;
- what the trials read came from the driver: the run's ``assets/manifest.json``, and the
  stage-1 cache on the storage computed each key once.
Prints a summary; exits 1 when a check fails.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections import Counter
from pathlib import Path

START_LIMIT_S = 60


def rows(trial: Path) -> list[dict]:
    path = trial / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def study_trials(run: Path) -> list[tuple[int, str]]:
    """The search's own study (the file also holds a derived study per backbone)."""
    query = (
        "select t.number, t.state from trials t join studies s on t.study_id = s.study_id "
        "where s.study_name = ?"
    )
    with sqlite3.connect(run / "study.db") as db:
        return db.execute(query, (f"handreid-{run.name}",)).fetchall()


def search_rows(run: Path) -> list[dict]:
    import csv

    with (run / "trials.csv").open() as fh:
        table = list(csv.DictReader(fh))
    return [r for r in table if r.get("role", "search") in ("", "search")]


def started_training_after(trial: Path, first: dict) -> float:
    """Seconds from the trial's start to its first epoch's start. The start: the first of
    the event files the driver's TensorBoard logger opens as the trial starts (named by its
    time; a retry opens another), else params.json (rewritten by a retry)."""
    events = [int(p.name.split(".")[3]) for p in trial.glob("events.out.tfevents.*")]
    begun = min(events) if events else (trial / "params.json").stat().st_mtime
    return first["timestamp"] - first.get("epoch_seconds", 0.0) - begun


def main(argv: list[str]) -> int:
    run, worker, samples = Path(argv[0]), argv[1], int(argv[2])
    mark = Path(argv[3]) if len(argv) > 3 else None
    killed = float(mark.read_text()) if mark and mark.is_file() else None
    failed: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok: " if ok else "!!! FAILED: ") + what)
        if not ok:
            failed.append(what)

    trials = {t.name: rows(t) for t in sorted(run.glob("trial_*"))}
    on_worker = {n for n, rs in trials.items() if any(r.get("node_ip") == worker for r in rs)}
    for name, rs in trials.items():
        nodes = [("worker" if r.get("node_ip") == worker else "head") for r in rs]
        runs = [f"{n} x{c}" for n, c in _runs(nodes)]
        print(f"{name}: {len(rs)} epochs, {rs[-1]['status'] if rs else '-'}: {', '.join(runs)}")
    check(bool(on_worker), f"{len(on_worker)} of {len(trials)} trials ran epochs on the worker")

    dup = {
        n: [e for e, c in Counter(r["epoch"] for r in rs).items() if c > 1]
        for n, rs in trials.items()
    }
    dup = {n: e for n, e in dup.items() if e}
    check(not dup, f"each epoch reported once in every trial's result.json {dup or ''}")
    table = search_rows(run)
    ids = [r["trial_id"] for r in table]
    study = study_trials(run)
    states = Counter(s for _, s in study)
    print(f"trials.csv: {len(table)} search rows; study: {len(study)} trials {dict(states)}")
    check(len(ids) == len(set(ids)) == len(study) == samples, "trials.csv = study, one row each")
    check({f"trial_{i}" for i in ids} == set(trials), "trials.csv = the trial folders")

    if killed is not None:
        hit = []
        for name, rs in trials.items():
            before = [r for r in rs if r["timestamp"] <= killed]
            after = [r for r in rs if r["timestamp"] > killed]
            if before and after and before[-1].get("node_ip") == worker:
                where = sorted({("worker" if r["node_ip"] == worker else "head") for r in after})
                hit.append(
                    f"{name} (epochs 1-{before[-1]['epoch']} then {after[0]['epoch']}-"
                    f"{after[-1]['epoch']} on {'/'.join(where)})"
                )
        print(f"in flight on the worker at its kill: {', '.join(hit) or 'none that went on'}")
        check(bool(hit), "a trial on the worker at its kill went on from its checkpoint")

    starts = {}
    for name in on_worker:
        first = trials[name][0]
        if first.get("node_ip") == worker:
            starts[name] = started_training_after(run / name, first)
    if starts:
        print(
            "from trial start to its first epoch's start, on the worker: "
            + ", ".join(f"{n} {s:.0f} s" for n, s in sorted(starts.items(), key=lambda x: x[1]))
        )
        check(
            max(starts.values()) <= START_LIMIT_S,
            f"trials on the worker train within {START_LIMIT_S} s",
        )

    manifest = run / "assets" / "manifest.json"
    check(manifest.is_file(), "the driver's assets on the storage")
    if manifest.is_file():
        doc = json.loads(manifest.read_text())
        print(f"assets: {', '.join(doc['entries'])} ({len(doc['files'])} files)")
    log = run / "stage1_cache" / "computations.log"
    keys = [line.split("\t")[0] for line in log.read_text().splitlines()] if log.is_file() else []
    check(len(keys) == len(set(keys)), f"stage 1 computed once per key ({len(keys)} computations)")
    return 1 if failed else 0


def _runs(items: list[str]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for item in items:
        if out and out[-1][0] == item:
            out[-1] = (item, out[-1][1] + 1)
        else:
            out.append((item, 1))
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
