"""The explanation work unit: SHAP values of the model the training work unit saved.

Models are trained by the real training work unit (a process, as a pod runs it); the
explanations run as the explain work unit, in a process or through its ``main``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from kubetrain.data import Standardizer
from kubetrain.explain import TrainedModel, expected_gradients, explain, summarize
from kubetrain.report import MAX_RESULT_BYTES, parse_event
from kubetrain.workloads import explain as explain_unit
from torch import nn

INFORMATIVE = {"f0", "f1", "f2"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _manifest(name: str, dataset: dict[str, Any], model: dict[str, Any],
              training: dict[str, Any], explanation: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"dataset": dataset, "model": model, "training": training,
                 "explanation": {"enabled": True, **explanation}},
    }


def _unit(module: str, job: Path, storage: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", f"kubetrain.workloads.{module}", "--job", str(job),
         "--storage", str(storage), *extra],
        capture_output=True, text=True, timeout=600, env=env)


def _train(job: Path, storage: Path) -> None:
    proc = _unit("train", job, storage)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (storage / "train" / "model.pt").exists()


def _events(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [e for e in map(parse_event, proc.stdout.splitlines()) if e is not None]


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """make_classification: features f0, f1, f2 informative, f3..f9 noise; an MLP trained on it."""
    from sklearn.datasets import make_classification

    root = tmp_path_factory.mktemp("tabular")
    X, y = make_classification(n_samples=600, n_features=10, n_informative=3, n_redundant=0,
                               shuffle=False, random_state=0)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(10)])
    frame["label"] = y
    frame.to_csv(root / "data.csv", index=False)
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump(_manifest(
        "tabular-shap",
        {"uri": str(root / "data.csv"), "target": "label", "seed": 0},
        {"builtin": "mlp", "params": {"hiddenUnits": [32, 16]}},
        {"epochs": 12, "batchSize": 32, "learningRate": 0.01},
        {"samples": 60, "background": 50, "topK": 5},
    ), sort_keys=False))
    storage = root / "storage"
    _train(job, storage)
    return job, storage


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("digits")
    job = root / "job.yaml"
    job.write_text(yaml.safe_dump(_manifest(
        "digits-shap",
        {"builtin": "digits", "seed": 0},
        {"builtin": "cnn", "params": {"channels": [8, 16], "hiddenUnits": 32}},
        {"epochs": 5, "batchSize": 64, "learningRate": 0.01},
        {"samples": 30, "background": 30, "topK": 8},
    ), sort_keys=False))
    storage = root / "storage"
    _train(job, storage)
    return job, storage


@pytest.fixture(scope="module")
def tabular_explained(tabular: tuple[Path, Path]) -> list[dict[str, Any]]:
    """The explain work unit's events for the make_classification MLP (method auto)."""
    job, storage = tabular
    return _events(_unit("explain", job, storage))


def test_gradient_ranks_the_informative_features_first(
        tabular: tuple[Path, Path], tabular_explained: list[dict[str, Any]]) -> None:
    _, storage = tabular
    events = tabular_explained
    assert [e["event"] for e in events] == ["start", "result"]
    assert events[0]["method"] == "gradient" and events[0]["requested_method"] == "auto"
    result_file = storage / "explain" / "result.json"
    assert len(result_file.read_bytes()) <= MAX_RESULT_BYTES
    result = json.loads(result_file.read_text())
    assert result == events[-1]["summary"]
    assert result["unit"] == "explain" and result["status"] == "succeeded"
    assert result["method"] == "gradient"
    assert (result["samples"], result["background"]) == (60, 50)
    top = [f["feature"] for f in result["top_features"]]
    assert len(top) == 5
    assert set(top[:3]) == INFORMATIVE, top
    # expected gradients add up: sum(SHAP) = f(x) - E[f(background)] within 5 %
    assert 0 <= result["completeness_error"] < 0.05
    assert "warning" not in result

    analysis = json.loads(Path(result["analysis"]).read_text())
    values = analysis["explanations"]["gradient_shap"]["label"]["global_shap_values"]
    noise = max(v for k, v in values.items() if k not in INFORMATIVE)
    assert min(values[k] for k in INFORMATIVE) > 2 * noise, values
    for name, path in result["plots"].items():
        assert Path(path).read_bytes()[:8] == PNG_MAGIC, name
    assert set(result["plots"]) == {"bar", "beeswarm"}


def test_analysis_json_has_the_clarify_shape(
        tabular: tuple[Path, Path], tabular_explained: list[dict[str, Any]]) -> None:
    _, storage = tabular
    assert tabular_explained[-1]["summary"]["analysis"] == str(
        storage / "explain" / "analysis.json")
    analysis = json.loads((storage / "explain" / "analysis.json").read_text())
    assert analysis["version"] == "1.0"
    assert list(analysis["explanations"]) == ["gradient_shap"]
    label = analysis["explanations"]["gradient_shap"]["label"]
    assert set(label) == {"global_shap_values", "expected_value"}
    assert list(label["global_shap_values"]) == [f"f{i}" for i in range(10)]
    assert all(v >= 0 for v in label["global_shap_values"].values())
    assert isinstance(label["expected_value"], float)
    extra = analysis["kubetrain"]
    assert extra["method"] == "gradient" and extra["samples"] == 60
    assert extra["explained_output"] == "logit of the predicted class"
    assert [f["feature"] for f in extra["top_features"]] == [
        f["feature"] for f in tabular_explained[-1]["summary"]["top_features"]]
    assert set(extra["per_class"]) <= {"0", "1"}
    assert sum(c["samples"] for c in extra["per_class"].values()) == 60
    few = extra["local_samples"]
    assert len(few) == 3 and all(s["split"] == "test" for s in few)
    # mean f(x) = expected_value + sum of the mean signed SHAP values (additivity on average)
    local = json.loads((storage / "explain" / "local.json").read_text())
    assert local["feature_names"] == [f"f{i}" for i in range(10)]
    assert len(local["samples"]) == 60
    mean_output = np.mean([s["output"] for s in local["samples"]])
    total = label["expected_value"] + sum(extra["mean_shap_values"].values())
    spread = np.mean([abs(s["output"] - s["expected_value"]) for s in local["samples"]])
    assert abs(mean_output - total) < 0.05 * spread
    for sample in local["samples"]:
        assert len(sample["shap_values"]) == 10
        assert sample["explained"] in ("0", "1")


@pytest.mark.parametrize("method", ["kernel", "permutation"])
def test_model_agnostic_methods_run_on_a_tiny_tabular_model(
        tabular: tuple[Path, Path], tmp_path: Path, method: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    job, storage = tabular
    small = yaml.safe_load(job.read_text())
    small["spec"]["explanation"].update({"method": method, "samples": 6, "background": 25})
    small_job = tmp_path / "job.yaml"
    small_job.write_text(yaml.safe_dump(small))
    out = tmp_path / "storage"
    code = explain_unit.main(["--job", str(small_job), "--storage", str(out),
                              "--model", str(storage / "train" / "model.pt")])
    assert code == 0
    events = [e for e in map(parse_event, capsys.readouterr().out.splitlines()) if e]
    result = events[-1]["summary"]
    assert result["method"] == method and result["samples"] == 6
    # kernel (all 2^10 coalitions) and permutation SHAP add up exactly to f(x) - E[f(bg)]
    assert result["completeness_error"] < 1e-3
    assert set(f["feature"] for f in result["top_features"][:3]) == INFORMATIVE
    analysis = json.loads((out / "explain" / "analysis.json").read_text())
    assert list(analysis["explanations"]) == [f"{method}_shap"]
    if method == "kernel":
        assert analysis["kubetrain"]["background_kept"] == 20  # k-means summary


def test_digits_cnn_gives_a_pixel_heat_map(digits: tuple[Path, Path]) -> None:
    job, storage = digits
    result = _events(_unit("explain", job, storage))[-1]["summary"]
    assert result["method"] == "gradient"
    assert result["completeness_error"] < 0.05
    top = [f["feature"] for f in result["top_features"]]
    assert len(top) == 8 and all(f.startswith("c0_h") and "_w" in f for f in top)
    assert set(result["plots"]) == {"bar", "heatmap", "samples"}
    for path in result["plots"].values():
        assert Path(path).read_bytes()[:8] == PNG_MAGIC
    analysis = json.loads(Path(result["analysis"]).read_text())
    values = analysis["explanations"]["gradient_shap"]["label"]["global_shap_values"]
    assert len(values) == 64
    heatmap = np.asarray(analysis["kubetrain"]["heatmap"])
    assert heatmap.shape == (8, 8)
    # the heat map is the per-pixel mean |SHAP| (one channel)
    assert heatmap[3, 4] == pytest.approx(values["c0_h3_w4"])
    # digits' corner pixel is always blank: it cannot matter
    assert values["c0_h0_w0"] == 0.0
    # the centre of the image matters more than its border columns
    assert heatmap[1:7, 2:6].mean() > 3 * heatmap[:, [0, 7]].mean()


def test_missing_model_fails_with_a_clear_message(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_manifest(
        "no-model", {"builtin": "iris"}, {"builtin": "mlp"}, {"epochs": 1}, {})))
    code = explain_unit.main(["--job", str(job), "--storage", str(tmp_path / "storage")])
    assert code != 0
    err = capsys.readouterr().err
    assert "run the training stage first" in err
    assert str(tmp_path / "storage" / "train" / "model.pt") in err
    assert not (tmp_path / "storage" / "explain" / "result.json").exists()


# ----- the estimators themselves, on hand-made models -----------------------------------------


def _trained(model: nn.Module, n_features: int, num_outputs: int,
             task: str = "classification", **kwargs: Any) -> TrainedModel:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return TrainedModel(model, (n_features,), num_outputs, task, "tabular", Standardizer(),
                        [f"f{i}" for i in range(n_features)],
                        [str(i) for i in range(num_outputs)] if task == "classification" else [],
                        **kwargs)


def test_expected_gradients_are_exact_for_a_linear_model() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(5, 3).eval()
    x, bg = torch.randn(7, 5), torch.randn(11, 5)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    phi = expected_gradients(linear, x, bg, targets, nsamples=33, seed=1)
    # SHAP of a linear model: w_t * (x - E[background])
    expected = linear.weight.detach()[targets] * (x - bg.mean(0))
    assert torch.allclose(phi, expected, atol=1e-5)


def test_batched_gradient_matches_shap_gradient_explainer() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    trained = _trained(net, 6, 3)
    rng = np.random.default_rng(0)
    bg = rng.normal(size=(20, 6)).astype(np.float32)
    X = rng.normal(size=(8, 6)).astype(np.float32)
    ours = explain(trained, bg, X, "gradient", nsamples=400)
    theirs = explain(trained, bg, X, "gradient", nsamples=400, implementation="shap")
    assert np.array_equal(ours.targets, theirs.targets)
    scale = np.abs(theirs.values).mean()
    assert np.abs(ours.values - theirs.values).mean() < 0.15 * scale
    assert summarize(ours, trained).completeness_error < 0.02


def test_completeness_exposes_deep_explainer_on_an_unsupported_layer() -> None:
    """DeepExplainer has no rule for SiLU: its values are silently wrong; the check shows it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(),
                        nn.Linear(32, 3))
    trained = _trained(net, 6, 3)
    rng = np.random.default_rng(0)
    bg = (rng.normal(size=(30, 6)) * 2).astype(np.float32)
    X = (rng.normal(size=(20, 6)) * 2).astype(np.float32)
    deep = summarize(explain(trained, bg, X, "deep"), trained)
    gradient = summarize(explain(trained, bg, X, "gradient"), trained)
    assert deep.completeness_error > 0.2
    assert gradient.completeness_error < 0.05


def test_regression_is_explained_in_target_units() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    trained = _trained(net, 4, 1, task="regression", target_mean=100.0, target_std=10.0)
    rng = np.random.default_rng(0)
    bg = rng.normal(size=(16, 4)).astype(np.float32)
    X = rng.normal(size=(5, 4)).astype(np.float32)
    attribution = explain(trained, bg, X, "gradient", nsamples=160)
    summary = summarize(attribution, trained)
    with torch.no_grad():
        raw = net(torch.from_numpy(X))[:, 0].double().numpy()
    assert np.allclose(summary.outputs, raw * 10 + 100, atol=1e-4)
    assert np.allclose(summary.values, attribution.values * 10)
    assert summary.completeness_error < 0.05
    # the residual scales with the values: the completeness error is unit-free
    residual = summary.values.sum(1) - (summary.outputs - summary.base)
    assert np.allclose(residual, attribution.residual * 10)


def test_speed_bench_runs_end_to_end(tmp_path: Path) -> None:
    """bench/explain_speed.py with tiny settings (no timing assertions)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "explain_speed.py"
    spec = importlib.util.spec_from_file_location("kubetrain_bench_explain_speed", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--skip-shap-gradient", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    sides = [r["side"] for r in report["results"]]
    assert sides == ["kubetrain gradient (batched)", "shap KernelExplainer"]
    assert all(r["seconds"] > 0 for r in report["results"])
    assert report["results"][1]["completeness_error"] < 1e-3
