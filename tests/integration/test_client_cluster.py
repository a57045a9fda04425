"""kubetrain.Client against a real cluster: the notebook example as a user runs it (submit,
progress from a watch, findings, artifacts through a short-lived pod, delete), and a unit's log,
typed errors and suspend through the client."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s import REPO, get_json, kubectl, small_job, wait_for
from support import kubetrain

pytestmark = pytest.mark.cluster


def test_the_notebook_example_runs_on_the_cluster(namespace: str, operator: Any,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "artifacts"
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "notebook" / "digits_client.py"),
         "--namespace", namespace, "--epochs", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=400)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[phase] phase Running" in proc.stdout and "[phase] phase Succeeded" in proc.stdout
    assert "[finding] overfitting:" in proc.stdout
    assert (out / "train" / "model.pt").is_file() and (out / "report.md").is_file()
    name = proc.stdout.split("submitted ", 1)[1].split()[0]
    # The job is gone, and so is the pod that copied its files.
    wait_for(lambda: not get_json("trainingjobs", "-n", namespace)["items"], 60,
             f"{name} to be deleted")
    pods = get_json("pods", "-n", namespace, "-l",
                    "app.kubernetes.io/component=get-artifacts")["items"]
    assert all(p["metadata"].get("deletionTimestamp") for p in pods)


def test_logs_errors_and_suspend_through_the_client(namespace: str, operator: Any) -> None:
    # Imported here: the kubernetes library reads $KUBECONFIG when it is imported, and the
    # cluster fixture sets it.
    from kubetrain.client import Client, InvalidSpec, NotFound

    client = Client(namespace=namespace)
    with pytest.raises(NotFound):
        client.status("nope")
    with pytest.raises(InvalidSpec, match=r"spec\.training\.epochs"):
        client.submit({"spec": {**small_job("x")["spec"], "training": {"epochs": 0}}})
    job = client.submit(small_job("logged", training={"epochs": 2, "batchSize": 64}))
    done = client.wait(job.metadata.name, timeout=300)
    assert done.status is not None and done.status.phase == "Succeeded"
    lines = list(client.logs("logged", unit="train"))
    assert lines, "the train pod's log is empty"
    # following the log of a pod that has ended returns once the log is read
    assert list(client.logs("logged", unit="train", follow=True)) == lines
    with pytest.raises(NotFound, match="units with pods"):
        list(client.logs("logged", unit="explain"))
    suspended = client.submit(small_job("paused", runPolicy={"suspend": True}))
    events = client.watch(suspended.metadata.name, timeout=60)
    assert next(e for e in events if e.status.phase == "Suspended").kind == "phase"
    client.delete("paused")
    client.delete("logged")


def test_the_cli_against_the_cluster(namespace: str, operator: Any, tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(small_job("cli", training={"epochs": 2,
                                                                 "batchSize": 64})))
    submitted = kubetrain("submit", str(manifest), "-n", namespace, "--wait", "--no-progress")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert f"trainingjob {namespace}/cli created" in submitted.stdout
    assert "train epoch 2/2" in submitted.stderr and "train: done" in submitted.stderr
    # the printer columns: progress in epochs, cost as money with its currency
    row = kubectl("get", "trainingjob", "cli", "-n", namespace).stdout.splitlines()[1]
    assert "epoch 2/2" in row and " USD" in row and "e-0" not in row, row
    status = kubetrain("status", "cli", "-n", namespace)
    assert status.stdout.startswith("TrainingJob cli: Succeeded"), status.stdout
    assert " USD" in status.stdout and "e-0" not in status.stdout
    logs = kubetrain("logs", "cli", "-n", namespace, "--unit", "train")
    assert logs.returncode == 0 and logs.stdout.strip(), logs.stderr
    fetched = kubetrain("get-artifacts", "cli", str(tmp_path / "out"), "-n", namespace)
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "out" / "report.md").is_file()
    assert kubetrain("delete", "cli", "-n", namespace).returncode == 0
    missing = kubetrain("status", "cli", "-n", namespace)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_a_user_without_rights_gets_a_forbidden_error(namespace: str, tmp_path: Path) -> None:
    # A service account with no role: its token in a kubeconfig of its own.
    kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    secret = wait_for(lambda: (get_json("serviceaccount", "nobody", "-n", namespace)
                               .get("secrets") or [{}])[0].get("name"), 60, "the token secret")
    token = base64.b64decode(get_json("secret", secret, "-n", namespace)["data"]["token"])
    config = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    config["users"] = [{"name": "nobody", "user": {"token": token.decode()}}]
    config["contexts"][0]["context"]["user"] = "nobody"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    refused = kubetrain("status", "anything", "-n", namespace, env=env)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: TrainingJob {namespace}/anything: forbidden"), \
        refused.stderr
