from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
REAL_CSV = Path(__file__).parent / "data" / "HandInfo.csv"  # the real 11k metadata
TINY_YML = REPO / "spaces" / "base" / "tiny.yml"
# a conditional parameter as the real spaces have it: the centre loss's weight, searched
# only when the centre loss is on
CENTER_LOSS = {
    "loss.center.use": {"type": "bool"},
    "loss.center.weight": {
        "type": "float",
        "low": 1e-4,
        "high": 1e-3,
        "log": True,
        "when": {"loss.center.use": True},
    },
}

# ------------------------------------------------------------------ running in parallel
# `make test` runs the suite in two pytest-xdist workers (`-n 2 --dist loadgroup`). Each
# worker is its own session: what is built once per session (the cache, OpenAI-format
# weights) goes to a folder the workers share, under file locks; the tests of a module that
# share one Ray instance or cluster run in one worker; the longest tests start first.

LONGEST_FIRST = (  # modules whose tests took the longest (BENCHMARKS.md, "Test suite time")
    "tests/test_demo.py",
    "tests/test_jobs.py",
    "tests/test_full_size.py",
    "tests/test_new_head.py",
)
# module-scoped Ray fixtures (conftest's ray_local, test_reliability's cluster, test_auth's
# server): a module's tests that use one run in one worker, on one instance
MODULE_RAY = ("ray_local", "cluster", "server")


def pytest_configure(config) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # the workers share the cores: one worker's torch must not take them all
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config, items) -> None:
    """Longest tests first (the longest modules, then those marked slow; each module keeps
    its order), so that the last test to start is a short one; tests sharing a
    module-scoped Ray fixture form one xdist group."""

    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        if path in LONGEST_FIRST:
            return LONGEST_FIRST.index(path)
        return len(LONGEST_FIRST) + (item.get_closest_marker("slow") is None)

    items.sort(key=rank)  # stable: a module's tests stay in their order
    for item in items:
        if set(MODULE_RAY) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder of this test run that every xdist worker sees (the session's own otherwise)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / name
    path.mkdir(exist_ok=True)
    return path


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 matrix units (avx512_bf16 or AMX) and torch uses them.
    Without them torch runs bf16 matmuls in its reference GEMM: minutes per step at full
    size. ``HANDREID_ASSUME_NO_BF16=1`` takes the no-bf16 path on any CPU."""
    if os.environ.get("HANDREID_ASSUME_NO_BF16") == "1":
        return False
    import torch

    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:  # not Linux: torch's own check alone
        return True
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Synthetic datasets, pretrained tiny CLIPs and stage-1 results go to a cache of this
    test run, shared by its tests (and its xdist workers: each input is built under a lock)."""
    cache = shared_dir(tmp_path_factory, "handreid-cache")
    old = os.environ.get("HANDREID_CACHE")
    os.environ["HANDREID_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("HANDREID_CACHE", None)
    else:
        os.environ["HANDREID_CACHE"] = old


@pytest.fixture(scope="session")
def openai_file(tmp_path_factory):
    """``get(backbone)``: the path of seeded random weights in OpenAI's TorchScript format
    (bench.openai_weights), written once per test run (~350 MB for ViT-B-16, ~250 MB for
    RN50) and read by the real-size tests of every worker."""
    from filelock import FileLock

    from bench.openai_weights import write_openai_weights

    root = shared_dir(tmp_path_factory, "openai-weights")

    def get(backbone: str) -> Path:
        path = root / f"{backbone}.pt"
        with FileLock(str(path) + ".lock"):
            if not path.is_file():
                write_openai_weights(backbone, path.with_suffix(".part"))
                path.with_suffix(".part").rename(path)
        return path

    return get


def tiny_overrides(**extra) -> dict:
    """A small, fast variant of spaces/base/tiny.yml."""
    base = {
        "data.synth.ids": 16,
        "data.synth.per_id": 5,
        "train.stage1_epochs": 2,
        "train.epochs": 3,
        "train.patience": 0,
    }
    base.update(extra)
    return base


@pytest.fixture
def tiny_cfg(tmp_path):
    from handreid.config import load_config

    def make(**extra):
        overrides = tiny_overrides(**extra)
        overrides.setdefault("train.stage1_cache", str(tmp_path / "stage1"))
        return load_config(TINY_YML, overrides)

    return make


def write_placeholders(root: Path, names) -> None:
    """Tiny valid JPEGs named after the CSV's imageName column."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 150, 120)).save(buf, format="JPEG")
    data = buf.getvalue()
    (root / "Hands").mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / "Hands" / name).write_bytes(data)


@pytest.fixture(scope="session")
def real_root(tmp_path_factory) -> Path:
    """The real HandInfo.csv with a placeholder image for every row."""
    import shutil

    import pandas as pd

    root = tmp_path_factory.mktemp("real11k")
    shutil.copyfile(REAL_CSV, root / "HandInfo.csv")
    write_placeholders(root, pd.read_csv(REAL_CSV)["imageName"])
    return root


# ------------------------------------------------------------------ searches in a subprocess

SEARCH_ENV = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
FINAL = ("done", "early_stopped")  # a trial's last status when it ran to its end
STATES = {"complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}  # trials.csv -> study


def trial_results(run_dir: Path) -> dict[str, list[dict]]:
    """Each trial folder's result.json rows (a line cut by a kill is skipped)."""
    import json

    out = {}
    for trial in sorted(run_dir.glob("trial_*")):
        path = trial / "result.json"
        rows = []
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        out[trial.name] = rows
    return out


def search_command(space: Path, storage: Path, name: str, *extra: str) -> list[str]:
    import sys

    return [
        sys.executable,
        "-m",
        "search.cli",
        "--space",
        str(space),
        "--storage",
        str(storage),
        "--name",
        name,
        "--quiet",
        *extra,
    ]


def sigkill_search_when(cmd: list[str], run_dir: Path, ready, timeout: float = 300) -> dict:
    """Start a search, SIGKILL its process group once ``ready(results)`` holds; returns the
    trial results as they were at the kill."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, **SEARCH_ENV},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + timeout
    while not ready(trial_results(run_dir)):
        if time.time() > deadline or proc.poll() is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the search did not get going (or ended before the kill)")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return trial_results(run_dir)


def resume_search(cmd: list[str], timeout: float = 600) -> None:
    import subprocess

    out = subprocess.run(
        cmd + ["--resume"],
        cwd=REPO,
        env={**os.environ, **SEARCH_ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]


def small_space(
    tmp_path: Path,
    *,
    num_samples: int,
    search=None,
    start_points=None,
    max_epochs: int = 4,
    fixed=None,
    tune=None,
) -> Path:
    """A search over the tiny backbones on a small synthetic set; ``fixed`` and ``tune``
    entries replace the defaults."""
    doc = {
        "base": str(TINY_YML),
        "fixed": {
            "data.synth.ids": 24,
            "data.synth.per_id": 4,
            "train.stage1_epochs": 1,
            "train.patience": 0,
            **(fixed or {}),
        },
        "search": search
        or {
            "model.backbone": {"type": "categorical", "choices": ["tiny-vit", "tiny-rn"]},
            "optim.lr_visual": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        },
        "start_points": start_points or [],
        "tune": {
            "num_samples": num_samples,
            "seed": 0,
            "n_startup_trials": 3,
            "max_concurrent": 2,
            "max_failures": 1,
            "top_k": 1,
            "scheduler": {
                "type": "asha",
                "grace_period": 1,
                "reduction_factor": 2,
                "max_epochs": max_epochs,
            },
            "resources": {"cpus": 1, "gpus": 0},
            "confirm": {"top_k": 1, "seeds": 0},  # no confirmation stage unless a test asks
            **(tune or {}),
        },
    }
    path = tmp_path / "space.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def record_fault(fault: str, **facts) -> None:
    """Append one injected fault's outcome to test-artifacts/reliability.jsonl, the source
    of RELIABILITY.md's table."""
    import json

    out = REPO / "test-artifacts"
    out.mkdir(exist_ok=True)
    with open(out / "reliability.jsonl", "a") as fh:
        fh.write(json.dumps({"fault": fault, **facts}) + "\n")


def replayed_epochs(results: dict[str, list[dict]]) -> int:
    """Result rows beyond one per (trial, epoch): epochs run again after a stop or crash."""
    return sum(len(rows) - len({r["epoch"] for r in rows}) for rows in results.values())


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for the tests of a module that run searches in this process."""
    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # address="local": a new instance of this worker's own, never one another test started
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
