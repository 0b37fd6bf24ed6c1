"""Shared by the benchmarks: one result line on stdout and a JSON file under bench/results/."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "processor": platform.processor() or platform.machine(),
    }


def emit(name: str, line: str, data: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    doc = {
        "benchmark": name,
        "result": line,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        **data,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2, default=float))
    print(f"{name}: {line}")


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
