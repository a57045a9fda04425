"""Findings that act, on a real cluster: the remediation and cost-aware sweep examples
applied with kubectl."""

from __future__ import annotations

import json
from typing import Any

import pytest
from k8s import REPO, get_json, kubectl, wait_phase

pytestmark = pytest.mark.cluster


def test_remediate_example_retrains_in_pods_and_delivers_the_chosen_attempt(
        namespace: str, operator: Any) -> None:
    kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "remediate.yaml"))
    status = wait_phase(namespace, "remediate", ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
    finding = status["findings"]["overfitting"]
    assert finding["verdict"] == "overfitting"
    remediation = finding["remediation"]
    attempts = remediation["attempts"]
    assert remediation["done"] and len(attempts) >= 2
    for attempt in attempts:
        assert attempt["phase"] == "Succeeded" and "test_accuracy" in attempt["test"]
    chosen = attempts[remediation["chosen"]]
    assert status["artifacts"]["model"].endswith(f"{chosen['unit']}/model.pt")
    assert remediation["testGain"] == pytest.approx(
        chosen["test"]["test_accuracy"] - attempts[0]["test"]["test_accuracy"], abs=1e-5)
    # each attempt was a training pod of its own
    units = {p["metadata"]["labels"]["kubetrain.io/unit"]
             for p in get_json("pods", "-n", namespace)["items"]}
    assert {a["unit"] for a in attempts[1:]} <= units


def test_cost_aware_sweep_example_selects_from_the_front_in_trial_pods(
        namespace: str, operator: Any) -> None:
    kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "cost-aware-sweep.yaml"))
    status = wait_phase(namespace, "cost-aware-sweep", ("Succeeded", "Failed"), timeout=600)
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000]
    tuning = status["tuning"]
    assert tuning["objectives"] == ["val_accuracy", "cost"]
    assert tuning["trials"]["complete"] == 6
    front = tuning["paretoFront"]
    selection = tuning["selection"]
    assert front and selection["trial"] in {e["trial"] for e in front}
    assert selection["metricLost"] <= 0.01 + 1e-9 and selection["saved"] >= 0
    # the selected trial's parameters trained the final model
    assert tuning["best"]["trial"] == selection["trial"]
    assert status["training"]["epochs"] == tuning["best"]["params"]["epochs"]
    trials = [u for n, u in status["stages"]["tuning"]["units"].items()
              if n.startswith("trial-")]
    assert len(trials) == 6 and all(u["cost"] > 0 for u in trials)
    assert tuning["trialsCost"] == pytest.approx(sum(u["cost"] for u in trials), abs=1e-5)
