"""Every manifest in examples/ run as a user runs it: `kubetrain run examples/X.yaml`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import EXAMPLES, kubetrain
from kubetrain.api import load_training_job


def _run_example(name: str, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "status.yaml"
    proc = kubetrain("run", str(EXAMPLES / name), "--storage", str(tmp_path / "run"), "-o",
                     str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    job: dict[str, Any] = yaml.safe_load(out.read_text())
    return job


def test_every_example_is_tested() -> None:
    tested = {"digits.yaml", "breast-cancer.yaml", "overfit.yaml", "scarce-digits.yaml"}
    assert {p.name for p in EXAMPLES.glob("*.yaml")} == tested
    for path in EXAMPLES.glob("*.yaml"):
        load_training_job(path)


@pytest.mark.slow
def test_digits_reaches_95_percent_without_overfitting(tmp_path: Path) -> None:
    job = _run_example("digits.yaml", tmp_path)
    status = job["status"]
    assert status["phase"] == "Succeeded"
    training = status["training"]
    assert training["testMetrics"]["test_accuracy"] >= 0.95
    assert status["findings"]["overfitting"]["verdict"] == "none"
    # The two-process DDP gang ran, and the artifacts exist.
    assert status["stages"]["training"]["phase"] == "Succeeded"
    for key in ("model", "lossCurve", "report"):
        assert Path(status["artifacts"][key]).exists(), key
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
def test_breast_cancer_cross_validates(tmp_path: Path) -> None:
    job = _run_example("breast-cancer.yaml", tmp_path)
    status = job["status"]
    assert status["phase"] == "Succeeded"
    assert status["stages"]["training"]["jobs"] == [f"fold-{i}" for i in range(5)] + ["train"]
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
