"""The S3 example on a real cluster: the data stage's pod fetches from an S3 API server (moto,
on this machine, reached at the node's address) with keys from a Secret, once per version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s import REPO, apply_job, get_json, kubectl, wait_for, wait_phase
from s3server import S3Server

pytestmark = pytest.mark.cluster


def _node_address() -> str:
    node = get_json("nodes")["items"][0]
    return str(next(a["address"] for a in node["status"]["addresses"]
                    if a["type"] == "InternalIP"))


def _example_with_keys(namespace: str, s3_server: S3Server) -> dict[str, Any]:
    """The S3 example, its keys in the Secret it names, its endpoint the node's address."""
    kubectl("create", "secret", "generic", "s3-credentials", "-n", namespace,
            f"--from-literal=AWS_ACCESS_KEY_ID={s3_server.access_key}",
            f"--from-literal=AWS_SECRET_ACCESS_KEY={s3_server.secret_key}")
    manifest: dict[str, Any] = yaml.safe_load(Path(REPO / "examples" / "s3" / "job.yaml")
                                              .read_text())
    manifest["spec"]["dataset"]["endpoint"] = s3_server.endpoint(_node_address())
    return manifest


def test_s3_example_fetches_once_with_keys_from_a_secret(namespace: str, operator: Any,
                                                         s3_server: S3Server) -> None:
    manifest = _example_with_keys(namespace, s3_server)
    apply_job(namespace, manifest)
    status = wait_phase(namespace, "s3-digits", ("Succeeded", "Failed"), timeout=400)
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
    fetch = status["stages"]["data"]["units"]["fetch"]["result"]
    assert fetch["fetched"] is True and fetch["rows"] == 1797
    assert status["training"]["testMetrics"]["test_accuracy"] > 0.85
    # Only the data stage's pod gets the keys, and only as references to the Secret.
    pods = get_json("pods", "-n", namespace)["items"]
    for pod in pods:
        env = pod["spec"]["containers"][0].get("env") or []
        refs = [e for e in env if e["name"].startswith("AWS_")]
        if pod["metadata"]["labels"]["kubetrain.io/unit"] == "fetch":
            assert {e["name"] for e in refs} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
            assert all("valueFrom" in e and "value" not in e for e in refs)
        else:
            assert refs == []
    seen = kubectl("get", "tj,pods,events", "-n", namespace, "-o", "yaml").stdout
    assert s3_server.secret_key not in seen and s3_server.access_key not in seen
    # The same job again (its storage stays): the copy is there, nothing is fetched.
    kubectl("delete", "tj", "s3-digits", "-n", namespace, "--wait=true")
    wait_for(lambda: not get_json("pods", "-n", namespace)["items"], 120, "pods gone")
    apply_job(namespace, manifest)
    status = wait_phase(namespace, "s3-digits", ("Succeeded", "Failed"), timeout=400)
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
    again = status["stages"]["data"]["units"]["fetch"]["result"]
    assert again["fetched"] is False and again["version"] == fetch["version"]


def test_missing_s3_object_fails_the_job_as_data_unavailable(namespace: str, operator: Any,
                                                             s3_server: S3Server) -> None:
    manifest = _example_with_keys(namespace, s3_server)
    manifest["spec"]["dataset"]["uri"] = "s3://kubetrain-examples/missing.npz"
    apply_job(namespace, manifest)
    status = wait_phase(namespace, "s3-digits", ("Succeeded", "Failed"), timeout=300)
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DataUnavailable"
    assert failed["message"].startswith("spec.dataset.uri: s3://kubetrain-examples/missing.npz")
