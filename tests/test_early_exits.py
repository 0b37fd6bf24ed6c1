"""Every early exit of ``handreid-search`` answers in one line: a Ctrl-C at any moment says how
to go on (the resume command once the search is saved, else that nothing was saved), and a
``--resume`` with nothing to resume says so before the space, torch or Ray load."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from search.cli import main
from tests.conftest import REPO

DEMO = str(REPO / "spaces" / "demo.yml")


def args(tmp_path, *extra: str) -> list[str]:
    return ["--space", DEMO, "--storage", str(tmp_path / "runs"), "--name", "x", *extra]


def test_resume_with_nothing_to_resume_answers_within_5_seconds(tmp_path):
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "search.cli", *args(tmp_path, "--resume")],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    took = time.monotonic() - start
    assert out.returncode == 2 and took < 5, (took, out.stderr[-500:])
    assert out.stderr.strip() == (
        f"error: nothing to resume at {tmp_path / 'runs' / 'x'} (no saved search there); "
        "start the search without --resume"
    )


def _interrupt(*_, **__):
    raise KeyboardInterrupt


def test_ctrl_c_before_anything_is_saved_says_so_and_how_to_start_again(
    tmp_path, capsys, monkeypatch
):
    import search.space

    monkeypatch.setattr(search.space, "load_space", _interrupt)  # while the space loads
    assert main(args(tmp_path)) == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("interrupted before anything was saved")
    assert err.endswith(f"start again with: handreid-search --space {DEMO} --storage "
                        f"{tmp_path / 'runs'} --name x")  # fmt: skip


@pytest.mark.parametrize("given", [(), ("--resume",)])
def test_ctrl_c_once_the_search_is_saved_prints_the_resume_command(
    tmp_path, capsys, monkeypatch, given
):
    import search.driver

    def saved_then_interrupted(space, opts):
        folder = tmp_path / "runs" / "x"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tuner.pkl").write_bytes(b"")  # Tune's state, as Tuner.fit writes it first
        raise KeyboardInterrupt

    if given:
        (tmp_path / "runs" / "x").mkdir(parents=True)
        (tmp_path / "runs" / "x" / "tuner.pkl").write_bytes(b"")
    monkeypatch.setattr(search.driver, "run_search", saved_then_interrupted)
    assert main(args(tmp_path, *given)) == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("interrupted; the search is saved in ")
    assert err.endswith(f"resume with: handreid-search --space {DEMO} --storage "
                        f"{tmp_path / 'runs'} --name x --resume")  # fmt: skip


def test_a_real_ctrl_c_while_starting_is_one_line(tmp_path):
    """SIGINT a second into the command (the space and its libraries still loading)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.cli", *args(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted before anything was saved")


def test_ctrl_c_while_the_arguments_are_read_says_how_to_run_again(monkeypatch, capsys):
    """The earliest moment main can see: before the flags are parsed (was: a bare
    'interrupted', or a traceback from the imports cli.py made before main)."""
    import search.cli

    def interrupted_parser():
        raise KeyboardInterrupt

    monkeypatch.setattr(search.cli, "build_parser", interrupted_parser)
    argv = ["--space", "spaces/demo.yml", "--name", "x y"]
    assert search.cli.main(argv) == 130
    assert capsys.readouterr().err.strip() == (
        "interrupted before the search started (nothing saved); run again: "
        "handreid-search --space spaces/demo.yml --name 'x y'"
    )


def test_the_cli_module_imports_no_config_or_yaml():
    """What runs before main (the console script's import of search.cli) stays small, so
    that a Ctrl-C lands inside main's handler almost at once."""
    heavy = "('yaml', 'handreid.config', 'torch')"
    code = f"import sys, search.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
