"""LCBench's surrogate (YAHPO Gym 1.0.2) as a JSON-lines server, run by the yahpo venv.

yahpo-gym needs numpy 1.x and ConfigSpace 0.6, which the project's venv cannot hold, so
``bench.lcbench`` starts this script with ``.venv-yahpo/bin/python`` and talks to it over
stdin/stdout, one JSON object a line:

    request:  {"task": "3945", "configs": [{"batch_size": 64, ...}, ...]}
    reply:    {"val_accuracy": [[epoch 1, ..., epoch 52], ...]}    (or {"error": "..."})

Each configuration's whole curve (epochs 1-52) comes back in one reply. The data folder
(``bench/data/yahpo_lcbench``) is the first argument. Standalone: it imports nothing of
the project, and checks the yahpo-gym version it was written against.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile

VERSION = "1.0.2"
EPOCHS = 52
TARGET = "val_accuracy"


def open_scenario(data: str):
    """YAHPO's lcbench scenario reading ``data``; yahpo's own settings file in a temp dir."""
    settings = os.path.join(tempfile.mkdtemp(prefix="yahpo-"), "settings.yaml")
    with open(settings, "w") as fh:
        fh.write(f"data_path: {json.dumps(os.path.abspath(data))}\n")
    os.environ["YAHPO_LOCAL_CONFIG"] = settings
    from importlib.metadata import version

    from yahpo_gym import BenchmarkSet

    if version("yahpo-gym") != VERSION:  # the data layout and interface read here
        raise SystemExit(
            f"lcbench_surrogate: yahpo-gym {VERSION} expected, got {version('yahpo-gym')}"
        )
    if not os.path.isfile(os.path.join(data, "lcbench", "model.onnx")):
        raise SystemExit(f"lcbench_surrogate: no lcbench/model.onnx under {data}")
    with contextlib.redirect_stdout(io.StringIO()):  # its citation notice, on every start
        return BenchmarkSet("lcbench", check=False, multithread=False)


def curves(bench, task: str, configs: list[dict]) -> list[list[float]]:
    if task not in bench.instances:
        raise ValueError(f"unknown LCBench task {task!r}")
    if not configs:
        return []
    rows = [
        {**c, "OpenML_task_id": task, "epoch": e} for c in configs for e in range(1, EPOCHS + 1)
    ]
    values = [float(r[TARGET]) for r in bench.objective_function(rows)]
    return [values[i : i + EPOCHS] for i in range(0, len(values), EPOCHS)]


def main() -> int:
    out, sys.stdout = sys.stdout, sys.stderr  # yahpo prints citations: keep the channel clean
    bench = open_scenario(sys.argv[1])
    out.write(json.dumps({"ready": VERSION}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            reply = {TARGET: curves(bench, str(request["task"]), request["configs"])}
        except Exception as exc:  # the client raises it, naming the request
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
