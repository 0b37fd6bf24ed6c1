"""The embedded default (``handreid-search`` without ``--address``) runs Ray with token
authentication: a client that lacks the token is refused before it can run anything.

The server is ``search.launch.init_ray`` in a subprocess with ``RAY_AUTH_MODE`` unset and an
empty HOME, so Ray's default for a local ``ray.init`` decides. Each client is another
subprocess with a clean environment and its own empty HOME (no ~/.ray/auth_token).
"""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tests.conftest import REPO

SERVER = """
import sys
import ray
from search.launch import init_ray
init_ray(None, num_gpus=0)
print("GCS_ADDRESS=" + ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # serve until the test closes stdin
ray.shutdown()
"""

CLIENT = """
import sys
import ray
ray.init(address=sys.argv[1], log_to_driver=False)
@ray.remote
def answer():
    return 42
print("TASK_RESULT=%d" % ray.get(answer.remote(), timeout=20), flush=True)
"""

# Ray's own RAY_AUTH_MODE for the server: None is the embedded default (unset).
SERVER_AUTH_MODE: str | None = None
START_TIMEOUT_S = 45
CLIENT_TIMEOUT_S = 45


def clean_env(home, ray_tmp, **extra) -> dict[str, str]:
    """Nothing inherited: no RAY_AUTH_*, no RAY_ADDRESS, a HOME of its own."""
    env = {
        "PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin",
        "HOME": str(home),
        "PYTHONPATH": str(REPO),
        "RAY_TMPDIR": ray_tmp,  # no other test's Ray instance is found or joined
        # Linux Ray advertises its routable address; this makes it use the loopback.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_NUM_REDIS_GET_RETRIES": "3",  # a refused client gives up after ~3 s, not ~20 s
    }
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def read_until(stream, prefix: str, timeout_s: float) -> tuple[str | None, str]:
    """The first line starting with prefix (None on timeout or EOF), and all lines read."""
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line[len(prefix) :].strip(), "".join(seen)
    return None, "".join(seen)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("server-home")
    ray_tmp = tempfile.mkdtemp(prefix="rayauth", dir="/tmp")  # short: Ray's socket paths
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER],
        cwd=REPO,
        env=clean_env(home, ray_tmp, RAY_AUTH_MODE=SERVER_AUTH_MODE),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        address, log = read_until(proc.stdout, "GCS_ADDRESS=", START_TIMEOUT_S)
        assert address, f"the embedded Ray did not start in {START_TIMEOUT_S} s:\n{log}"
        yield {"address": address, "home": home, "ray_tmp": ray_tmp}
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def run_client(server, tmp_path, **env) -> subprocess.CompletedProcess:
    home = tmp_path / "client-home"
    home.mkdir()
    return subprocess.run(
        [sys.executable, "-c", CLIENT, server["address"]],
        cwd=tmp_path,
        env=clean_env(home, server["ray_tmp"], **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
    )


def test_embedded_ray_generated_a_token(server):
    token = server["home"] / ".ray" / "auth_token"
    assert token.is_file() and token.read_text().strip()


@pytest.mark.parametrize(
    "client_env",
    [
        pytest.param({}, id="no-token-mode-unset"),
        pytest.param(
            {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)},
            id="wrong-token",
        ),
    ],
)
def test_client_without_the_token_is_refused(server, tmp_path, client_env):
    out = run_client(server, tmp_path, **client_env)
    assert "TASK_RESULT=" not in out.stdout, f"a client without the token ran a task:\n{out.stdout}"
    assert out.returncode != 0
    assert "InvalidAuthToken" in out.stdout, out.stdout


def test_client_with_the_token_runs_a_task(server, tmp_path):
    """The control: the refusals above are the token's doing, not an unreachable server."""
    token = server["home"] / ".ray" / "auth_token"
    out = run_client(
        server,
        tmp_path,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_NUM_REDIS_GET_RETRIES="20",  # Ray's default: a busy machine may be slow to answer
    )
    assert "TASK_RESULT=42" in out.stdout, out.stdout
