"""bench/gpu_check.sh checks its imports before anything runs: a Python without ftfy and
wcwidth (the device image's case) stops it at once, naming the wheels to bring."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.sh"


def test_the_script_parses():
    out = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_python_without_ftfy_and_wcwidth_stops_it_naming_the_wheels(tmp_path):
    block = tmp_path / "block"
    block.mkdir()  # sitecustomize runs at start-up: the two modules cannot be imported
    (block / "sitecustomize.py").write_text(
        "import sys\nfor name in ('ftfy', 'wcwidth'):\n    sys.modules[name] = None\n"
    )
    shim = tmp_path / "python3"  # the python the script is given, as on the device
    shim.write_text(
        f'#!/bin/sh\nPYTHONPATH="{block}${{PYTHONPATH:+:$PYTHONPATH}}" exec {sys.executable} "$@"\n'
    )
    shim.chmod(0o755)
    out_dir = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(shim)}
    run = subprocess.run(
        ["bash", str(SCRIPT), str(out_dir)], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 3, run.stdout + run.stderr
    assert "missing: wcwidth (wheel: wcwidth)" in run.stderr
    assert "missing: ftfy (wheel: ftfy)" in run.stderr
    assert "missing: open_clip (installed) -- needs ftfy" in run.stderr
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"--python-version {version}" in run.stderr and "-d .whl wcwidth ftfy" in run.stderr
    assert "== device" not in run.stdout  # stopped before the first check
    assert list(out_dir.iterdir()) == []  # nothing measured, scratch removed


def test_with_everything_installed_the_import_check_passes():
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu_imports"], capture_output=True, text=True, cwd=REPO
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("imports: all 16 present")
