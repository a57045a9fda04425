"""Datasets in object storage and on the web: fetched once per version by the data stage,
read from the job's storage by every other unit, with clear errors and no leaked credentials.
Against a real S3 API server (moto's server mode, authentication on) and a real HTTP server."""

from __future__ import annotations

import functools
import http.server
import json
import os
import runpy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from s3server import BUCKET, S3Server
from support import EXAMPLES, kubetrain


def _job(tmp_path: Path, server: S3Server | None, uri: str, **dataset: Any) -> Path:
    manifest = yaml.safe_load((EXAMPLES / "s3" / "job.yaml").read_text())
    manifest["spec"]["dataset"]["uri"] = uri
    if server is not None:
        manifest["spec"]["dataset"]["endpoint"] = server.endpoint()
    else:
        manifest["spec"]["dataset"].pop("endpoint")
        manifest["spec"]["dataset"].pop("credentials")
    manifest["spec"]["dataset"].update(dataset)
    manifest["spec"]["training"]["epochs"] = 3
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def _run(job: Path, storage: Path, env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    out = storage.parent / "status.yaml"
    proc = kubetrain("run", str(job), "--storage", str(storage), "-o", str(out),
                     env={**os.environ, **env})
    status = yaml.safe_load(out.read_text())["status"] if out.exists() else {}
    return proc.returncode, status, proc.stdout + proc.stderr


def _fetch_result(status: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = status["stages"]["data"]["units"]["fetch"]["result"]
    return result


def _everything_written(storage: Path, output: str) -> str:
    texts = [output]
    for path in storage.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".yaml", ".txt", ".md", ".log"):
            texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


def test_s3_dataset_is_fetched_once_and_trains(tmp_path: Path, s3_server: S3Server) -> None:
    job = _job(tmp_path, s3_server, f"s3://{BUCKET}/digits.npz")
    storage = tmp_path / "run"
    code, status, output = _run(job, storage, s3_server.env())
    assert code == 0, output[-3000:]
    assert status["phase"] == "Succeeded"
    assert next(iter(status["stages"])) == "data"
    first = _fetch_result(status)
    assert first["fetched"] is True and first["rows"] == 1797 and first["bytes"] > 0
    assert status["training"]["testMetrics"]["test_accuracy"] > 0.85
    # Run again: the same version is in storage, nothing is fetched.
    code, status, output = _run(job, storage, s3_server.env())
    assert code == 0, output[-3000:]
    second = _fetch_result(status)
    assert second["fetched"] is False and second["version"] == first["version"]
    assert "already in storage, nothing fetched" in (storage / "fetch" / "log.txt").read_text()
    # A new version of the object (other bytes: another ETag) is fetched again.
    import io

    import numpy as np

    client: Any = s3_server.client()
    data = np.load(io.BytesIO(client.get_object(Bucket=BUCKET, Key="digits.npz")["Body"].read()))
    smaller = io.BytesIO()
    np.savez(smaller, X=data["X"][:1000], y=data["y"][:1000])
    client.put_object(Bucket=BUCKET, Key="digits.npz", Body=smaller.getvalue())
    try:
        code, status, output = _run(job, storage, s3_server.env())
    finally:
        runpy.run_path(str(EXAMPLES / "s3" / "upload.py"))["upload"](
            s3_server.endpoint(), BUCKET, credentials=s3_server.env())
    assert code == 0, output[-3000:]
    third = _fetch_result(status)
    assert third["fetched"] is True and third["rows"] == 1000
    assert third["version"] != first["version"]
    # Credentials never appear in what kubetrain writes or prints.
    assert s3_server.secret_key not in _everything_written(storage, output)
    assert s3_server.access_key not in _everything_written(storage, output)


@pytest.mark.parametrize(("uri", "env_change", "expected"), [
    (f"s3://{BUCKET}/missing.npz", {}, "does not exist"),
    ("s3://no-such-bucket/digits.npz", {}, "does not exist"),
    (f"s3://{BUCKET}/digits.npz", {"AWS_SECRET_ACCESS_KEY": "wrong-secret-1234"},
     "access was refused"),
], ids=["missing object", "missing bucket", "wrong key"])
def test_unavailable_s3_data_fails_the_job_naming_the_uri(
        tmp_path: Path, s3_server: S3Server, uri: str, env_change: dict[str, str],
        expected: str) -> None:
    storage = tmp_path / "run"
    env = {**s3_server.env(), **env_change}
    code, status, output = _run(_job(tmp_path, s3_server, uri), storage, env)
    assert code != 0 and status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DataUnavailable"
    assert failed["message"].startswith(f"spec.dataset.uri: {uri}") and expected in \
        failed["message"], failed["message"]
    assert status["stages"]["data"]["units"]["fetch"]["restarts"] == 0  # nothing retried
    assert "training" not in status["stages"] or \
        status["stages"]["training"]["phase"] == "Pending"
    # Nothing half-written: no copy, no partial download.
    remote = storage / "data" / "remote"
    assert not remote.exists() or not any(remote.iterdir())
    for secret in (env["AWS_SECRET_ACCESS_KEY"], env["AWS_ACCESS_KEY_ID"]):
        assert secret not in _everything_written(storage, output)


def test_an_unreachable_endpoint_fails_the_job_after_a_few_tries(tmp_path: Path) -> None:
    server = S3Server(port=1, access_key="x", secret_key="y")  # nothing listens on port 1
    _, status, _ = _run(_job(tmp_path, server, f"s3://{BUCKET}/digits.npz"),
                           tmp_path / "run", server.env())
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DataUnavailable"
    assert "http://127.0.0.1:1" in failed["message"] and "does not answer" in failed["message"]


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()


def test_a_dataset_on_the_web_is_fetched_and_read(tmp_path: Path,
                                                  http_folder: tuple[str, Path]) -> None:
    import numpy as np
    from sklearn.datasets import load_iris

    base, folder = http_folder
    iris = load_iris()
    np.savez(folder / "iris.npz", X=iris.data.astype(np.float32), y=iris.target)
    job = _job(tmp_path, None, f"{base}/iris.npz")
    code, status, output = _run(job, tmp_path / "run", {})
    assert code == 0, output[-3000:]
    result = _fetch_result(status)
    assert result["fetched"] is True and result["rows"] == 150
    copy = json.loads((tmp_path / "run" / "data" / "remote" / "current.json").read_text())
    assert Path(copy["path"]).read_bytes() == (folder / "iris.npz").read_bytes()
