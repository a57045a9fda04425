"""The generated CustomResourceDefinition: in sync with the models, structural, complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetrain.api.crd import PRESERVE, build_crd, crd_yaml
from kubetrain.api.quantity import CPU_PATTERN
from kubetrain.api.spec import (
    BUILTIN_MODEL_PARAMS,
    DatasetSpec,
    ImageAugmentationSpec,
    PricesSpec,
    ResourcesSpec,
    TrainingSpec,
    TuningSpec,
)

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "trainingjobs.kubetrain.io.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return build_crd()


@pytest.fixture(scope="module")
def root(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def at(root: dict[str, Any], path: str) -> dict[str, Any]:
    """The schema node of a dotted field path; `*` steps into a map's values."""
    node = root
    for part in path.split("."):
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    return node


def nodes(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every schema node below (and including) node, with its path."""
    found = [(path or "(root)", node)]
    for name, child in node.get("properties", {}).items():
        found += nodes(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        found += nodes(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        found += nodes(node["items"], f"{path}[]")
    return found


def test_crds_file_is_generated_from_the_models() -> None:
    assert CRD_FILE.read_text(encoding="utf-8") == crd_yaml(), (
        f"{CRD_FILE.name} is out of date with operator/kubetrain/api; regenerate it with "
        "`kubetrain crd > crds/trainingjobs.kubetrain.io.yaml`"
    )


def test_yaml_is_stable_and_parses_back() -> None:
    assert crd_yaml() == crd_yaml()
    assert yaml.safe_load(crd_yaml()) == build_crd()


def test_names_version_and_subresources(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "trainingjobs.kubetrain.io"
    spec = crd["spec"]
    assert spec["group"] == "kubetrain.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "TrainingJob", "listKind": "TrainingJobList", "plural": "trainingjobs",
        "singular": "trainingjob", "shortNames": ["tj"], "categories": ["ml"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd: dict[str, Any], root: dict[str, Any]) -> None:
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Stage", "Progress", "Best", "Overfit", "Cost", "Age"]
    # money as text with its currency ("0.000027 USD"), not a number kubectl prints as 2.7e-05
    assert columns["Cost"]["jsonPath"] == ".status.cost"
    assert columns["Cost"]["type"] == "string"
    assert columns["Age"] == {
        "name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"
    }
    for name, column in columns.items():
        if name == "Age":
            continue
        # every status column points at a field the status schema declares, with its type
        field = at(root, column["jsonPath"].lstrip("."))
        assert field["type"] == column["type"], name


def test_schema_is_structural(root: dict[str, Any]) -> None:
    text = yaml.safe_dump(root)
    for keyword in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title:", "const:"):
        assert keyword not in text
    for path, node in nodes(root):
        assert node.get("type") or node.get(PRESERVE) is True, f"{path} has no type"
        assert node.get("type") != "null", path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties") is not False, path  # v1 forbids false
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node:  # OpenAPI v3: a flag beside minimum/maximum
                assert node[bound] is True, path
                assert ("minimum" if bound == "exclusiveMinimum" else "maximum") in node, path
        if "default" in node:  # "" is refused by some 1.20 API servers (kubernetes#99804)
            assert node["default"] not in (None, ""), path
        if node.get("type") == "array":
            assert "items" in node, path


def test_spec_and_metadata(root: dict[str, Any]) -> None:
    assert root["required"] == ["spec"]
    assert root["properties"]["metadata"] == {"type": "object"}
    # model or training.command: one of the two, checked by the operator (names the field)
    assert at(root, "spec")["required"] == ["dataset"]
    assert at(root, "spec.tuning.searchSpace.*")["required"] == ["type"]


def test_free_form_fields_are_preserved(root: dict[str, Any]) -> None:
    params = at(root, "spec.model.params")
    assert params["type"] == "object" and params[PRESERVE] is True
    assert at(root, "spec.tuning.searchSpace.*.choices")["items"] == {PRESERVE: True}
    assert at(root, "status.tuning.best.params")[PRESERVE] is True
    assert at(root, "status.training.metrics")["additionalProperties"] == {"type": "number"}


def test_types_and_bounds(root: dict[str, Any]) -> None:
    assert at(root, "spec.training.epochs")["type"] == "integer"
    assert at(root, "spec.training.learningRate") | {"description": ""} == {
        "description": "", "type": "number", "minimum": 0, "exclusiveMinimum": True,
        "maximum": 10, "default": 1e-3,
    }
    assert at(root, "spec.training.dropout")["exclusiveMaximum"] is True
    assert at(root, "spec.training.resources.cpu")["pattern"] == CPU_PATTERN
    scale = at(root, "spec.augmentation.image.scale")
    assert (scale["minItems"], scale["maxItems"]) == (2, 2)
    assert at(root, "spec.dataset.uri")["minLength"] == 1
    assert at(root, "spec.training.command")["minItems"] == 1


@pytest.mark.parametrize(
    ("path", "model", "field"),
    [
        ("spec.training.epochs", TrainingSpec, "epochs"),
        ("spec.training.optimizer", TrainingSpec, "optimizer"),
        ("spec.training.batchSize", TrainingSpec, "batch_size"),
        ("spec.dataset.validationSplit", DatasetSpec, "validation_split"),
        ("spec.training.resources.memory", ResourcesSpec, "memory"),
        ("spec.tuning.sampler", TuningSpec, "sampler"),
        ("spec.findings.cost.prices.memoryGiBHour", PricesSpec, "memory_gi_b_hour"),
        ("spec.augmentation.image.scale", ImageAugmentationSpec, "scale"),
    ],
)
def test_defaults_match_the_models(
    root: dict[str, Any], path: str, model: type[Any], field: str
) -> None:
    assert at(root, path)["default"] == model.model_fields[field].get_default(
        call_default_factory=True
    )


def test_defaults_are_left_out_where_absent_means_unset(root: dict[str, Any]) -> None:
    assert "default" not in at(root, "spec.dataset.builtin")  # None
    assert "default" not in at(root, "spec.training.resources")  # a whole section
    assert "default" not in at(root, "spec.model.params")  # an empty dict


def test_defaults_validate_against_their_own_schema(root: dict[str, Any]) -> None:
    for path, node in nodes(root):
        if "default" not in node:
            continue
        value = node["default"]
        if "enum" in node:
            assert value in node["enum"], path
        if "minimum" in node:
            assert value > node["minimum"] if node.get("exclusiveMinimum") else (
                value >= node["minimum"]), path
        if "maximum" in node:
            assert value < node["maximum"] if node.get("exclusiveMaximum") else (
                value <= node["maximum"]), path


@pytest.mark.parametrize(
    ("path", "values"),
    [
        ("spec.training.optimizer", ["adamw", "sgd"]),
        ("spec.training.precision", ["auto", "fp32", "bf16", "fp16"]),
        ("spec.training.compile", ["none", "default", "reduce-overhead"]),
        ("spec.dataset.builtin", ["digits", "breast_cancer", "wine", "iris", "diabetes"]),
        ("spec.model.builtin", ["mlp", "cnn", "resnet"]),
        ("spec.tuning.sampler", ["grid", "random", "tpe", "cmaes", "gp", "nsga2"]),
        ("spec.tuning.searchSpace.*.type", ["float", "int", "categorical"]),
        ("status.phase", ["Pending", "Running", "Succeeded", "Failed", "Suspended",
                          "Queued"]),
        ("status.findings.overfitting.verdict", ["none", "suspected", "overfitting"]),
    ],
)
def test_enums(root: dict[str, Any], path: str, values: list[str]) -> None:
    node = at(root, path)
    assert node["type"] == "string"
    assert node["enum"] == values


def test_kubectl_explain_has_descriptions(root: dict[str, Any]) -> None:
    """`kubectl explain trainingjob.spec.<section>` describes every field of the spec."""
    spec = at(root, "spec")
    missing = [
        path for path, node in nodes(spec, "spec")
        if "description" not in node and not path.endswith("[]")
    ]
    assert missing == []
    training = at(root, "spec.training")
    assert training["description"].startswith("The training stage")
    assert "\n" not in at(root, "spec.model.entrypoint")["description"]  # docstrings unwrapped
    assert "Global batch size" in at(root, "spec.training.batchSize")["description"]


def test_model_params_description_names_each_builtin_models_parameters(
    root: dict[str, Any],
) -> None:
    description = at(root, "spec.model.params")["description"]
    for builtin, params in BUILTIN_MODEL_PARAMS.items():
        assert f"{builtin}: {', '.join(params)}" in description
