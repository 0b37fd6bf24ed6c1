"""Wall time of the demo search with the shared stage-1 cache and with it disabled.

python -m bench.demo_stage1
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import emit

REPO = Path(__file__).resolve().parents[1]


def run(storage: str, name: str, *extra: str) -> float:
    cmd = [
        sys.executable,
        "-m",
        "search.cli",
        "--space",
        "spaces/demo.yml",
        "--storage",
        storage,
        "--name",
        name,
        "--quiet",
        "--confirm-seeds",
        "0",  # the search alone: what the stage-1 cache changes
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HANDREID_CACHE"] = tmp  # same synthetic data for both, fresh stage 1
        cached = run(tmp, "cached")
        log = Path(tmp) / "cached" / "stage1_cache" / "computations.log"
        computed = len(log.read_text().splitlines())
        uncached = run(tmp, "uncached", "--no-stage1-cache")
    line = (
        f"demo search (16 trials): shared stage-1 cache {cached:.0f}s ({computed} stage-1 runs) "
        f"vs disabled {uncached:.0f}s (16 stage-1 runs): {uncached / cached:.2f}x"
    )
    emit(
        "demo_stage1",
        line,
        {"cached_s": cached, "uncached_s": uncached, "stage1_runs_cached": computed},
    )


if __name__ == "__main__":
    main()
