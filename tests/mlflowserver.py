"""A real MLflow tracking server for the tests: ``mlflow server`` over SQLite in its own
process, artifacts served through it (as a team's server runs), checked with MLflow's client."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class MlflowServer:
    port: int
    root: Path

    def uri(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def client(self) -> object:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    pytest.importorskip("mlflow.server", reason="the test server needs the mlflow package "
                        "(the dev extra)")
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = (root / "server.log").open("w")
    # 0.0.0.0 and any Host header: pods of the local cluster reach it at the node's address.
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "0.0.0.0", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--allowed-hosts", "*"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("mlflow server did not start: "
                                       + (root / "server.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield MlflowServer(port, root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
