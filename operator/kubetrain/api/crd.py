"""The TrainingJob CustomResourceDefinition, generated from the spec and status models.

Kubernetes needs a *structural* OpenAPI v3 schema: every node has a type, there are no ``$ref``s
and no unions, ``exclusiveMinimum`` is a boolean beside ``minimum``, and free-form values say
``x-kubernetes-preserve-unknown-fields``. Pydantic emits JSON Schema 2020-12, so this module
rewrites it. Anything it does not know how to rewrite is an error, so that a new kind of field
in the models fails here and not at ``kubectl apply``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema, to_jsonable_python

from .resource import GROUP, KIND, PLURAL, VERSION
from .spec import TrainingJobSpec
from .status import TrainingJobStatus

CRD_NAME = f"{PLURAL}.{GROUP}"
PRESERVE = "x-kubernetes-preserve-unknown-fields"

# Validation keywords OpenAPI v3 and JSON Schema share, copied as they are.
_COPIED = ("enum", "minimum", "maximum", "minLength", "maxLength", "pattern", "minItems",
           "maxItems", "format")
# JSON Schema keywords dropped or rewritten on purpose; any other keyword is an error.
_HANDLED = {"title", "description", "type", "default", "properties", "required", "items",
            "additionalProperties", "exclusiveMinimum", "exclusiveMaximum", "const", *_COPIED}

PRINTER_COLUMNS: list[dict[str, str]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
     "description": "Pending, Queued, Running, Succeeded, Failed or Suspended."},
    {"name": "Stage", "type": "string", "jsonPath": ".status.currentStage",
     "description": "The stage running now."},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress",
     "description": "Progress of the current stage: epoch 12/30, 7/16 trials; queue position 3."},
    {"name": "Best", "type": "string", "jsonPath": ".status.best",
     "description": "The best validation result so far."},
    {"name": "Overfit", "type": "string", "jsonPath": ".status.findings.overfitting.verdict",
     "description": "Overfitting verdict: none, suspected or overfitting."},
    {"name": "Cost", "type": "string", "jsonPath": ".status.cost",
     "description": "What the job has cost so far, as money: 0.42 USD."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class CrdSchemaError(ValueError):
    """A model uses a type that has no structural OpenAPI v3 form."""


class _WithFactoryDefaults(GenerateJsonSchema):
    """Also show defaults that come from a factory (``scale: [0.9, 1.1]``).

    Factories that build an empty container or a whole section are left out: absent and empty
    mean the same to the models, and the API server would otherwise write them into every object.
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory: Callable[[], Any] | None = schema.get("default_factory")  # type: ignore[assignment]
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()
        if isinstance(value, BaseModel) or value in ([], {}):
            return NoDefault
        return to_jsonable_python(value)


def _description(text: str) -> str:
    """Docstrings are hard-wrapped; kubectl explain wraps again, so keep only paragraph breaks."""
    paragraphs = [" ".join(p.split()) for p in text.strip().split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def _resolve(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    """Inline ``$ref``s and collapse ``Optional[X]`` into X; the field's own keys win."""
    seen: set[str] = set()
    while True:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name in seen:
                raise CrdSchemaError(f"{path}: recursive model {name} cannot be inlined")
            seen.add(name)
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            node = {**defs[name], **siblings}
        elif "anyOf" in node or "oneOf" in node or "allOf" in node:
            key = next(k for k in ("anyOf", "oneOf", "allOf") if k in node)
            branches = [b for b in node[key] if b != {"type": "null"}]
            if len(branches) != 1:
                raise CrdSchemaError(
                    f"{path}: a union of {len(branches)} types is not structural; "
                    "use one type (Optional[X] is fine)"
                )
            siblings = {k: v for k, v in node.items() if k != key}
            node = {**branches[0], **siblings}
        else:
            return node


def _structural(raw: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(raw, defs, path)
    unknown = set(node) - _HANDLED
    if unknown:
        raise CrdSchemaError(f"{path}: no structural form for {sorted(unknown)}")
    out: dict[str, Any] = {}
    if node.get("description"):
        out["description"] = _description(node["description"])
    kind = node.get("type")
    if kind is None:  # Any: a free-form value
        if "const" in node or "enum" in node:
            raise CrdSchemaError(f"{path}: an enum needs a type")
        out[PRESERVE] = True
        return out
    if not isinstance(kind, str) or kind == "null":
        raise CrdSchemaError(f"{path}: type {kind!r} is not structural")
    out["type"] = kind
    if "const" in node:
        out["enum"] = [node["const"]]
    for key in _COPIED:
        if key in node:
            # A copy: an enum shared by two fields would otherwise be dumped as a YAML alias.
            out[key] = list(node[key]) if isinstance(node[key], list) else node[key]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:
            if limit in node:
                raise CrdSchemaError(f"{path}: both {limit} and {bound}")
            out[limit] = node[bound]
            out[bound] = True
    # An empty-string default says nothing the models don't, and API servers built with
    # Go >= 1.16 before Kubernetes 1.21 (the test cluster's) refuse it as "null"
    # (kubernetes/kubernetes#99804): leave it out, like a null default.
    if node.get("default") not in (None, ""):
        out["default"] = node["default"]
    if kind == "array":
        out["items"] = _structural(node.get("items", {}), defs, f"{path}[]")
    if kind == "object":
        properties = node.get("properties", {})
        if properties:
            out["properties"] = {
                name: _structural(child, defs, f"{path}.{name}")
                for name, child in properties.items()
            }
        extra = node.get("additionalProperties", False)
        if isinstance(extra, dict) and extra:
            if properties:
                raise CrdSchemaError(f"{path}: both properties and additionalProperties")
            out["additionalProperties"] = _structural(extra, defs, f"{path}.*")
        elif extra is True or extra == {} or not properties:
            out[PRESERVE] = True  # dict[str, Any]: keep whatever the user wrote
        if node.get("required"):
            out["required"] = list(node["required"])
    return out


def openapi_schema(model: type[BaseModel], path: str) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model, for a CRD."""
    raw = model.model_json_schema(by_alias=True, schema_generator=_WithFactoryDefaults)
    defs = raw.pop("$defs", {})
    return _structural(raw, defs, path)


def build_crd() -> dict[str, Any]:
    """The TrainingJob CustomResourceDefinition, as a dict ready for YAML or the API."""
    spec = openapi_schema(TrainingJobSpec, "spec")
    status = openapi_schema(TrainingJobStatus, "status")
    status["properties"]["kopf"] = {
        "description": "The operator's own bookkeeping (kopf): the last handled spec, and the "
        "progress of a reconcile being retried.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    root = {
        "description": "A deep-learning training pipeline: data, augmentation, tuning, training "
        "and explanation, with overfitting and cost findings in its status.",
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "The versioned schema of this object: kubetrain.io/v1alpha1.",
                "type": "string",
            },
            "kind": {"description": "The kind of this object: TrainingJob.", "type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["tj"],
                "categories": ["ml"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as YAML, byte-for-byte stable for a given set of models (crds/ is checked)."""
    header = "# Generated from operator/kubetrain/api by `kubetrain crd`; do not edit.\n"
    body = yaml.safe_dump(build_crd(), sort_keys=False, allow_unicode=True, width=100)
    return header + body
