"""Every manifest in examples/ run as a user runs it: `kubetrain run examples/X.yaml`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetrain.api import load_training_job
from support import EXAMPLES, kubetrain


def _run_example(name: str, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "status.yaml"
    proc = kubetrain("run", str(EXAMPLES / name), "--storage", str(tmp_path / "run"), "-o",
                     str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    job: dict[str, Any] = yaml.safe_load(out.read_text())
    return job


def test_every_example_is_tested() -> None:
    tested = {"digits.yaml", "breast-cancer.yaml", "overfit.yaml", "scarce-digits.yaml",
              "remediate.yaml",
              "cost-aware-sweep.yaml",
              # tests/workloads/test_custom_script.py
              "custom-script/job.yaml",
              # tests/workloads/test_remote_data.py, tests/integration/test_remote_data_cluster.py
              "s3/job.yaml",
              # the claim every cluster test's namespace gets (tests/integration/k8s.py)
              "storage/kubetrain-data.yaml"}
    assert {str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.yaml")} == tested
    for path in EXAMPLES.glob("*.yaml"):
        load_training_job(path)


@pytest.mark.slow
def test_digits_runs_all_four_stages_reaches_95_percent_without_overfitting(
        tmp_path: Path) -> None:
    job = _run_example("digits.yaml", tmp_path)
    status = job["status"]
    assert status["phase"] == "Succeeded"
    assert {name: s["phase"] for name, s in status["stages"].items()} == {
        "augmentation": "Succeeded", "tuning": "Succeeded", "training": "Succeeded",
        "explanation": "Succeeded"}
    training = status["training"]
    assert training["testMetrics"]["test_accuracy"] >= 0.95
    assert status["findings"]["overfitting"]["verdict"] == "none"
    # every unit that does the job's work measured what it used (findings.utilization)
    assert status["findings"]["utilization"]["measuredUnits"] >= 5
    # Augmentation doubled the training split, class by class.
    augmentation = status["augmentation"]
    assert all(augmentation["countsAfter"][c] == 2 * n
               for c, n in augmentation["countsBefore"].items())
    # The sweep ran its 6 trials; its best parameters trained the final model.
    tuning = status["tuning"]
    trials = tuning["trials"]
    assert trials["total"] == 6 and trials["complete"] + trials["pruned"] == 6
    assert set(tuning["best"]["params"]) == {"learningRate", "dropout"}
    explanation = status["findings"]["explanation"]
    assert explanation["method"] == "gradient"
    assert explanation["completenessError"] < 0.05
    assert len(explanation["topFeatures"]) == 10
    assert explanation["topFeatures"][0]["feature"].startswith("c0_h")
    for key in ("model", "lossCurve", "report", "shapBar", "shapHeatmap", "explanation"):
        assert Path(status["artifacts"][key]).exists(), key
    report = Path(status["artifacts"]["report"]).read_text()
    for heading in ("## Augmentation", "## Tuning", "## Explanation", "shap_heatmap.png"):
        assert heading in report
    cost = status["findings"]["cost"]
    assert cost["total"] > 0 and cost["cpuHours"] > 0 and cost["currency"] == "USD"
    assert "training" in cost["byStage"]
    types = {c["type"]: c for c in status["conditions"]}
    assert types["Succeeded"]["status"] == "True"
    assert types["OverfittingDetected"]["status"] == "False"


@pytest.mark.slow
def test_overfit_example_is_called_overfitting(tmp_path: Path) -> None:
    job = _run_example("overfit.yaml", tmp_path)
    finding = job["status"]["findings"]["overfitting"]
    assert finding["verdict"] == "overfitting"
    assert {"gap", "trend"} <= set(finding["rules"])
    assert finding["epochsAfterBest"] > 5
    assert any("val_loss" in e and "train_loss" in e for e in finding["evidence"])
    recommendations = " ".join(finding["recommendations"])
    for field in ("training.earlyStopping", "training.dropout", "training.weightDecay",
                  "augmentation"):
        assert field in recommendations
    cost = job["status"]["findings"]["cost"]
    assert cost["afterBestEpoch"] > 0
    types = {c["type"]: c for c in job["status"]["conditions"]}
    assert types["OverfittingDetected"]["status"] == "True"
    assert types["OverfittingDetected"]["reason"] == "OverfittingDetected"


@pytest.mark.slow
def test_remediate_example_retrains_and_delivers_the_best_validation_attempt(
        tmp_path: Path) -> None:
    job = _run_example("remediate.yaml", tmp_path)
    status = job["status"]
    assert status["phase"] == "Succeeded"
    finding = status["findings"]["overfitting"]
    assert finding["verdict"] == "overfitting"
    remediation = finding["remediation"]
    attempts = remediation["attempts"]
    assert remediation["done"] and 2 <= len(attempts) <= 3  # the original and maxAttempts: 2
    assert attempts[1]["added"] == ["training.earlyStopping", "training.weightDecay",
                                    "training.dropout"]
    for attempt in attempts:
        assert attempt["phase"] == "Succeeded" and attempt["verdict"] in (
            "none", "suspected", "overfitting")
        assert {"val_accuracy", "val_loss"} <= set(attempt["validation"])
        assert "test_accuracy" in attempt["test"] and attempt["cost"] > 0
    # chosen on validation accuracy (the earlier attempt on a tie), whatever the test says
    best = max(range(len(attempts)), key=lambda i: (
        attempts[i]["validation"]["val_accuracy"], -attempts[i]["validation"]["val_loss"], -i))
    assert remediation["chosen"] == best
    chosen = attempts[best]
    assert remediation["testGain"] == pytest.approx(
        chosen["test"]["test_accuracy"] - attempts[0]["test"]["test_accuracy"], abs=1e-5)
    assert remediation["cost"] == pytest.approx(sum(a["cost"] for a in attempts[1:]), abs=1e-5)
    model = status["artifacts"]["model"]
    assert model.endswith(f"{chosen['unit']}/model.pt")
    # the explanation stage explains the delivered model
    assert status["stages"]["explanation"]["units"]["explain"]["result"]["model"] == model
    report = (tmp_path / "run" / "report.md").read_text()
    assert "### Remediation" in report and f"| {best} (delivered) |" in report


@pytest.mark.slow
def test_breast_cancer_cross_validates(tmp_path: Path) -> None:
    job = _run_example("breast-cancer.yaml", tmp_path)
    status = job["status"]
    assert status["phase"] == "Succeeded"
    assert status["stages"]["training"]["jobs"] == [f"fold-{i}" for i in range(5)] + ["train"]
    assert status["augmentation"]["kind"] == "tabular"
    before, after = status["augmentation"]["countsBefore"], status["augmentation"]["countsAfter"]
    # SMOTE balanced the classes (the minority class grew more than the majority).
    assert len(set(after.values())) == 1 and before["malignant"] < before["benign"]
    assert status["tuning"]["trials"]["complete"] == 4
    top = [f["feature"] for f in status["findings"]["explanation"]["topFeatures"]]
    assert len(top) == 8 and all(isinstance(f, str) and f for f in top)
    cv = status["training"]["crossValidation"]
    assert cv["folds"] == 5 and len(cv["values"]) == 5
    assert 0.9 <= cv["mean"] <= 1.0 and 0 <= cv["std"] < 0.1
    assert status["training"]["testMetrics"]["test_accuracy"] >= 0.9
    report = Path(status["artifacts"]["report"]).read_text()
    assert "Cross-validation (5 folds)" in report


@pytest.mark.slow
def test_scarce_digits_augments_the_training_split(tmp_path: Path) -> None:
    job = _run_example("scarce-digits.yaml", tmp_path)
    status = job["status"]
    assert status["phase"] == "Succeeded"
    assert [s for s in status["stages"]] == ["augmentation", "training"]
    augmentation = status["augmentation"]
    before = sum(augmentation["countsBefore"].values())
    after = sum(augmentation["countsAfter"].values())
    # 8 transformed copies of each of the ~125 training images, and nothing else.
    assert 100 <= before <= 150 and after == 9 * before
    assert augmentation["added"] == 8 * before
    assert any("RandomAffine" in op or "rotation" in op for op in augmentation["operations"])
    assert status["training"]["testMetrics"]["test_accuracy"] >= 0.85


@pytest.mark.slow
def test_cost_aware_sweep_selects_a_cheap_trial_within_one_point(tmp_path: Path) -> None:
    job = _run_example("cost-aware-sweep.yaml", tmp_path)
    status = job["status"]
    assert status["phase"] == "Succeeded"
    tuning = status["tuning"]
    assert tuning["objectives"] == ["val_accuracy", "cost"]
    assert tuning["trials"]["complete"] == 6
    front = tuning["paretoFront"]
    assert front, "no Pareto front in status"
    for entry in front:
        assert set(entry["values"]) == {"val_accuracy", "cost"} and entry["values"]["cost"] > 0
        assert set(entry["params"]) == {"epochs", "learningRate", "model.hiddenUnits"}
    # No trial on the front is beaten on both objectives by another one on it.
    for a in front:
        assert not any(b["values"]["val_accuracy"] >= a["values"]["val_accuracy"]
                       and b["values"]["cost"] < a["values"]["cost"] for b in front)
    selection = tuning["selection"]
    assert selection["rule"] == "cheapestWithin 0.01"
    assert selection["metricLost"] <= 0.01 + 1e-9
    assert selection["cost"] <= selection["bestMetricCost"] and selection["saved"] >= 0
    assert selection["trial"] in {e["trial"] for e in front}
    # The selected trial's parameters trained the final model (its epochs included).
    best = tuning["best"]
    assert best["trial"] == selection["trial"]
    assert status["training"]["epochs"] == best["params"]["epochs"]
    # Each trial's cost, and the sweep's total.
    units = [u for n, u in status["stages"]["tuning"]["units"].items()
             if n.startswith("trial-")]
    assert len(units) == 6 and all(u["cost"] > 0 for u in units)
    assert tuning["trialsCost"] == pytest.approx(sum(u["cost"] for u in units), abs=1e-5)
    report = Path(status["artifacts"]["report"]).read_text()
    assert "Pareto front" in report and "Selection cheapestWithin 0.01" in report
