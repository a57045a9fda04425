"""A real MLflow tracking server for the tests: ``mlflow server`` over SQLite in its own
process, artifacts served through it (as a team's server runs), checked with MLflow's client."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import free_port, wait_for_port


@dataclass
class MlflowServer:
    port: int
    root: Path

    def uri(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def client(self) -> object:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri())


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    pytest.importorskip("mlflow.server", reason="the test server needs the mlflow package "
                        "(the dev extra)")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = (root / "server.log").open("w")
    # 0.0.0.0 and any Host header: pods of the local cluster reach it at the node's address.
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "0.0.0.0", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--allowed-hosts", "*"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        try:
            wait_for_port(port, proc, 120, "mlflow server")
        except RuntimeError as error:
            raise RuntimeError(f"{error}: {(root / 'server.log').read_text()[-2000:]}") from None
        yield MlflowServer(port, root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
