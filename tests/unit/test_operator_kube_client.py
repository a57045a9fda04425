"""The operator's own Kubernetes client (controller/kube.py): paths, credentials from a
kubeconfig, errors, a re-login after a 401, and the process without the ``kubernetes`` package.

Requests go to a small HTTP server in the test that records what it gets (the client's
behaviour against the real API server is what every cluster test's operator runs on)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetrain.controller import kube


def test_paths_name_core_and_group_resources() -> None:
    assert kube.PODS.path("ns") == "/api/v1/namespaces/ns/pods"
    assert kube.PODS.path("ns", "p-0", "log") == "/api/v1/namespaces/ns/pods/p-0/log"
    assert kube.LEASES.path("ns", "l") == \
        "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l"
    assert kube.TRAINING_JOBS.path(None) == "/apis/kubetrain.io/v1alpha1/trainingjobs"
    assert kube.CONFIG_MAPS.path("ns", "a/b") == "/api/v1/namespaces/ns/configmaps/a%2Fb"


class _Server:
    """Answers from a table (method, path) -> (status, body); records each request."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.requests.append({"method": self.command, "path": self.path,
                                        "headers": dict(self.headers),
                                        "body": json.loads(body) if body else None})
                queue = server.answers.get((self.command, self.path.split("?")[0])) or \
                    [(404, {"kind": "Status", "message": f"{self.path} not found"})]
                status, answer = queue.pop(0) if len(queue) > 1 else queue[0]
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *_: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[_Server]:
    served = _Server()
    yield served
    served.http.shutdown()


def _kubeconfig(path: Path, server: str, user: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": user}]}))
    return path


def test_requests_carry_the_token_and_errors_name_status_and_message(
        server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "config", server.url,
                                                     {"token": "secret-1"})))
    server.answers[("GET", "/api/v1/namespaces/ns/pods")] = [(200, {"items": [{"a": 1}]})]
    server.answers[("PATCH", "/apis/kubetrain.io/v1alpha1/namespaces/ns/trainingjobs/j")] = [
        (200, {"metadata": {"name": "j"}})]
    server.answers[("POST", "/api/v1/namespaces/ns/configmaps")] = [
        (409, {"kind": "Status", "message": "configmaps \"c\" already exists"})]
    client = kube.Kube()
    assert client.list(kube.PODS, "ns", label_selector="kubetrain.io/job=j") == [{"a": 1}]
    assert server.requests[0]["path"] == \
        "/api/v1/namespaces/ns/pods?labelSelector=kubetrain.io%2Fjob%3Dj"
    assert server.requests[0]["headers"]["Authorization"] == "Bearer secret-1"
    with pytest.raises(kube.ApiError) as raised:
        client.create(kube.CONFIG_MAPS, "ns", {"metadata": {"name": "c"}})
    assert raised.value.status == 409 and "already exists" in raised.value.message
    client.merge_patch(kube.TRAINING_JOBS, "ns", "j", {"metadata": {"annotations": {"a": "b"}}})
    assert server.requests[-1]["headers"]["Content-Type"] == "application/merge-patch+json"
    with pytest.raises(kube.ApiError):
        client.delete(kube.PODS, "ns", "p", grace_period_seconds=0)
    assert server.requests[-1]["body"] == {"apiVersion": "v1", "kind": "DeleteOptions",
                                           "gracePeriodSeconds": 0}


def test_a_401_loads_the_credentials_again_and_retries_once(
        server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _kubeconfig(tmp_path / "config", server.url, {"token": "old"})
    monkeypatch.setenv("KUBECONFIG", str(config))
    client = kube.Kube()
    _kubeconfig(config, server.url, {"token": "new"})  # the token rotated
    server.answers[("GET", "/api/v1/namespaces/ns/configmaps/c")] = [
        (401, {"kind": "Status", "message": "Unauthorized"}), (200, {"data": {"k": "v"}})]
    assert client.get(kube.CONFIG_MAPS, "ns", "c") == {"data": {"k": "v"}}
    assert [r["headers"]["Authorization"] for r in server.requests] == ["Bearer old",
                                                                        "Bearer new"]


def test_no_answer_is_an_api_error_with_status_zero(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "config", "http://127.0.0.1:9",
                                                     {"token": "t"})))
    with pytest.raises(kube.ApiError) as raised:
        kube.Kube().list(kube.PODS, "ns")
    assert raised.value.status == 0


def test_a_kubeconfig_that_needs_an_exec_plugin_is_refused_by_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(
        tmp_path / "config", "https://127.0.0.1:6443",
        {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws"}})))
    with pytest.raises(kube.LoginError, match=r"users\[\]\.user\.exec"):
        kube.load_credentials()


def test_the_operator_process_never_loads_the_kubernetes_package() -> None:
    # kopf imports `kubernetes` whenever it is installed (to recognise its models); it is here.
    probe = ("import sys; {block}import kopf, kubetrain.controller.handlers, "
             "kubetrain.controller.leader, kubetrain.controller.lifecycle; "
             "print(bool(sys.modules.get('kubernetes')))")
    def loaded(block: str) -> str:
        return subprocess.run([sys.executable, "-c", probe.format(block=block)], check=True,
                              capture_output=True, text=True).stdout.strip()
    assert loaded("") == "True"
    assert loaded("from kubetrain.controller.kube import block_kubernetes_package; "
                  "block_kubernetes_package(); ") == "False"
