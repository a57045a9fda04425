"""Helpers shared by the tests (imported as `support`; fixtures live in conftest.py)."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
LOCAL_ENV = Path("/var/lib/localk8s/env")


class FakeClock:
    """A monotonic clock the test moves by hand (``clock.now += 3``)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ctrl_c_reaches_it() -> None:
    """A ``Popen`` ``preexec_fn``: the child handles Ctrl-C (SIGINT) as it would in a terminal.

    A process started in the background of a non-interactive shell (``bash .ci/run &``: how a
    CI dry run here was started) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt: ``kubetrain run`` rightly ignored the tests' SIGINT and ran to the end
    (exit 0, not 130). Tests that send SIGINT start their process with this."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cluster_env() -> dict[str, str]:
    """The environment with KUBECONFIG and the PATH of kubectl and helm.

    KUBECONFIG as given, else the cluster hack/local-cluster.sh started (or found), else the
    machine's localk8s. KUBECONFIG stays unset when no cluster is known.
    """
    env = dict(os.environ)
    if not env.get("KUBECONFIG"):
        found = subprocess.run(["bash", str(REPO / "hack" / "local-cluster.sh"), "env"],
                               capture_output=True, text=True)
        exports = found.stdout if found.returncode == 0 else (
            LOCAL_ENV.read_text() if LOCAL_ENV.exists() else "")
        for line in exports.splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export "):].partition("=")
                env[key] = value.replace("$PATH", env.get("PATH", ""))
    return env


def tool(name: str) -> str | None:
    """Full path of kubectl or helm: on PATH, or where the local cluster installed it."""
    return shutil.which(name) or shutil.which(name, path=cluster_env().get("PATH"))


def base_manifest(**spec_overrides: Any) -> dict[str, Any]:
    """A small, valid TrainingJob (digits MLP, a few epochs) to change in tests."""
    manifest: dict[str, Any] = {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "test-job"},
        "spec": {
            "dataset": {"builtin": "digits", "seed": 0},
            "model": {"builtin": "mlp", "params": {"hiddenUnits": [64]}},
            "training": {"epochs": 4, "batchSize": 64, "learningRate": 0.003},
        },
    }
    manifest["spec"].update(copy.deepcopy(spec_overrides))
    return manifest


def kubetrain(*args: str, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """The kubetrain command as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "kubetrain.cli", *args],
        capture_output=True, text=True, timeout=timeout, **kwargs,
    )


def helm(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The helm binary (see tool()); check: fail with helm's output when it fails."""
    binary = tool("helm")
    assert binary is not None, "helm not found"
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def free_port() -> int:
    """A port nothing listens on now (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float, what: str) -> None:
    """Until a server process listens on the port; its early exit or the timeout is an error."""
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.3)
