"""Custom script mode on a real cluster: the example applied with kubectl in its own image, a
deleted pod that the program resumes from, and a program that fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s import (
    REPO,
    WORKER_IMAGE,
    apply_job,
    check_image,
    get_json,
    job_status,
    kubectl,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.cluster
EXAMPLE = REPO / "examples" / "custom-script" / "job.yaml"
EXAMPLE_IMAGE = WORKER_IMAGE.replace("kubetrain-worker", "kubetrain-custom-example")


@pytest.fixture
def example_image(cluster: dict[str, str]) -> str:
    # PyTorch and the script, and no kubetrain: the runner is in a container beside it.
    check_image(EXAMPLE_IMAGE, ["python", "-c", "import importlib.util, pathlib, torch; "
                                "assert importlib.util.find_spec('kubetrain') is None; "
                                "assert pathlib.Path('/app/train.py').exists()"],
                "hack/build-images.sh custom-example")
    return EXAMPLE_IMAGE


def _example(**changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(Path(EXAMPLE).read_text())
    for section, values in changes.items():
        manifest["spec"][section] = {**manifest["spec"].get(section, {}), **values}
    return manifest


def test_custom_script_example_applied_with_kubectl(namespace: str, operator: Any,
                                                    example_image: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    status = wait_phase(namespace, "custom-script", ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
    trials = status["tuning"]["trials"]
    assert trials["total"] == 6 and trials["complete"] + trials["pruned"] == 6
    # Each trial's parameters come from its own seed; with two at a time, trials 2 to 5 each
    # meet a finished trial to be compared with, and the worst of them is pruned.
    assert trials["pruned"] >= 1, json.dumps(status["tuning"])[:3000]
    assert status["training"]["testMetrics"]["test_accuracy"] >= 0.9
    assert "verdict" in status["findings"]["overfitting"]
    assert status["findings"]["explanation"]["completenessError"] < 0.05
    assert status["findings"]["cost"]["total"] > 0
    train = status["stages"]["training"]["units"]["train"]["result"]
    assert train["world_size"] == 2 and train["model"].endswith("/train/model.ts")
    # The training and trial pods ran the user's image beside the runner (the worker image);
    # the explanation ran in the worker image alone.
    images = {p["metadata"]["labels"]["kubetrain.io/unit"]:
              [c["image"] for c in p["spec"]["containers"]]
              for p in get_json("pods", "-n", namespace)["items"]}
    assert images["train"] == images["trial-0"] == [WORKER_IMAGE, example_image]
    assert images["explain"] == [WORKER_IMAGE]


def test_deleted_training_pod_restarts_and_the_program_resumes(namespace: str, operator: Any,
                                                               example_image: str) -> None:
    manifest = _example(tuning={"enabled": False}, explanation={"enabled": False})
    # Long enough (about a minute: 1 s an epoch on 2 cores) to be deleted mid-training.
    manifest["spec"]["training"].update(epochs=60, batchSize=8, params={"hidden": 512})
    manifest["spec"]["training"]["command"] += ["--patience", "1000"]
    manifest["metadata"]["name"] = "resume"
    apply_job(namespace, manifest)
    seen = wait_for(lambda: (job_status(namespace, "resume").get("training") or {}).get(
        "epoch", 0) >= 3 and job_status(namespace, "resume")["training"]["epoch"], 300,
        "epoch 3 of the custom program", interval=1)
    pod = get_json("pod", "resume-train-0", "-n", namespace)
    assert pod["status"]["phase"] == "Running", "training finished before the test deleted it"
    kubectl("delete", "pod", "resume-train-0", "-n", namespace, "--wait=false")
    status = wait_phase(namespace, "resume", ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
    unit = status["stages"]["training"]["units"]["train"]
    assert unit["attempt"] >= 1  # a lost pod: a new attempt, not a failure
    assert unit["result"]["resumed_from_epoch"] >= seen
    assert status["training"]["epoch"] == 60


def test_a_failing_program_fails_the_job_with_its_exit_code_and_output(
        namespace: str, operator: Any, example_image: str) -> None:
    manifest = _example(tuning={"enabled": False}, explanation={"enabled": False},
                        runPolicy={"backoffLimit": 0})
    manifest["metadata"]["name"] = "failing"
    manifest["spec"]["training"]["command"] = [
        "python", "-c", "import sys; print('loading data'); print('KeyError: label'); "
        "sys.exit(5)"]
    apply_job(namespace, manifest)
    status = wait_phase(namespace, "failing", ("Succeeded", "Failed"), timeout=300)
    assert status["phase"] == "Failed"
    message = " ".join(c.get("message", "") for c in status["conditions"]
                       if c["type"] in ("Failed", "TrainingComplete"))
    assert "exited with code 5" in message and "KeyError: label" in message, message


def test_a_two_pod_gang_runs_the_program_under_torchrun_in_each_pod(
        namespace: str, operator: Any, example_image: str) -> None:
    # Two pods of one process each (the cluster has one node; the pods still meet only over
    # the network, through the gang's rendezvous, as on two nodes).
    manifest = _example(tuning={"enabled": False}, explanation={"enabled": False})
    manifest["metadata"]["name"] = "gang"
    manifest["spec"]["training"].update(
        epochs=4, resources={"nodes": 2, "nprocPerNode": 1, "cpu": "500m", "memory": "1Gi"})
    apply_job(namespace, manifest)
    status = wait_phase(namespace, "gang", ("Succeeded", "Failed"), timeout=400)
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
    result = status["stages"]["training"]["units"]["train"]["result"]
    assert result["world_size"] == 2 and status["training"]["epoch"] == 4
    for rank in (0, 1):
        pod = get_json("pod", f"gang-train-{rank}", "-n", namespace)
        program = next(c for c in pod["spec"]["containers"] if c["name"] == "program")
        env = {e["name"]: e.get("value") for e in program.get("env") or []}
        assert program["image"] == example_image
        assert env["PET_NNODES"] == "2" and env["PET_NODE_RANK"] == str(rank)
