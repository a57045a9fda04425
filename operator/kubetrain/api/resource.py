"""The TrainingJob resource as a whole, and loading it from YAML with readable errors."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from .base import ApiModel
from .quantity import CPU_PATTERN, MEMORY_PATTERN
from .spec import (
    CURRENCY_PATTERN,
    ENTRYPOINT_PATTERN,
    NAME_PATTERN,
    OBJECT_NAME_PATTERN,
    FieldProblem,
    TrainingJobSpec,
)
from .status import TrainingJobStatus

GROUP = "kubetrain.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingJob"
PLURAL = "trainingjobs"


class ObjectMeta(ApiModel):
    """The part of Kubernetes metadata kubetrain reads; the rest is carried through untouched."""

    model_config = {**ApiModel.model_config, "extra": "allow"}

    name: str = Field(min_length=1, max_length=63)
    """The job's name: a DNS-1123 label (lower-case letters, digits, '-'), unique in its
    namespace."""
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None


class TrainingJob(ApiModel):
    api_version: Literal["kubetrain.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TrainingJob"]
    metadata: ObjectMeta
    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None

    def to_manifest(self) -> dict[str, Any]:
        """The resource as Kubernetes would store it: camelCase, no unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ManifestError(ValueError):
    """A manifest that cannot be used, with one line per problem, each naming the field."""

    def __init__(self, problems: list[str], source: str = "manifest") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


# What a pattern means, for people: the regex itself is the last resort.
_PATTERN_HINTS = {
    CPU_PATTERN: "a CPU quantity such as 500m, 1 or 2.5",
    MEMORY_PATTERN: "a memory quantity such as 512Mi, 4Gi or 8G",
    ENTRYPOINT_PATTERN: '"package.module:function"',
    OBJECT_NAME_PATTERN: "a Kubernetes name: lower-case letters, digits, '-' and '.'",
    CURRENCY_PATTERN: "a three-letter currency code such as USD",
}


def _fields(loc: tuple[Any, ...]) -> list[str | int]:
    """The field names and list indexes in a pydantic error location."""
    return [
        part for part in loc
        # pydantic's internal validator steps are not fields
        if isinstance(part, int)
        or not (str(part).startswith("function-") or part in ("str", "int", "float", "list"))
    ]


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in _fields(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "(top level)"


def _unwrap(annotation: Any) -> Any:
    """X from X | None."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _model_fields(model: type[BaseModel]) -> dict[str, Any]:
    return {(f.alias or name): f for name, f in model.model_fields.items()}


def _model_at(parts: list[str | int]) -> type[BaseModel] | None:
    """The model class a field path leads to inside a TrainingJob, if it leads to one."""
    current: Any = TrainingJob
    for part in parts:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = _model_fields(current).get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) in (dict, list):
            current = typing.get_args(current)[-1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unknown_field_message(parts: list[str | int]) -> str:
    message = "unknown field (check the spelling; fields are camelCase)"
    model = _model_at(parts[:-1])
    if model is None or not parts:
        return message
    allowed = list(_model_fields(model))
    by_lower = {name.lower(): name for name in allowed}
    close = difflib.get_close_matches(str(parts[-1]).lower(), by_lower, n=1, cutoff=0.6)
    guess = f"did you mean `{by_lower[close[0]]}`? " if close else ""
    return f"unknown field; {guess}allowed here: {', '.join(allowed)}"


def _missing_field_message(parts: list[str | int]) -> str:
    model = _model_at(parts[:-1])
    field = _model_fields(model).get(str(parts[-1])) if model and parts else None
    about = field.description if field else None
    if field and not about:
        inner = _unwrap(field.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            about = inner.__doc__
    return "required field is missing" + (f" ({' '.join(about.split())})" if about else "")


def format_validation_error(error: ValidationError) -> list[str]:
    """One line per problem: ``spec.training.learningRate: must be > 0 (got -1)``."""
    problems = []
    for item in error.errors():
        path = _field_path(tuple(item["loc"]))
        kind = item["type"]
        ctx = item.get("ctx") or {}
        given = item.get("input")
        cause = ctx.get("error")
        if kind == "extra_forbidden":
            message = _unknown_field_message(_fields(tuple(item["loc"])))
        elif kind == "missing":
            message = _missing_field_message(_fields(tuple(item["loc"])))
        elif kind == "literal_error":
            message = f"must be one of {ctx.get('expected', '')} (got {given!r})"
        elif kind == "value_error" and isinstance(cause, FieldProblem):
            path = cause.field if path == "(top level)" else f"{path}.{cause.field}"
            message = cause.message
        elif kind == "value_error":
            message = str(cause or item["msg"])
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            message = f"{item['msg'].replace('Input should be', 'must be')} (got {given!r})"
        elif kind == "string_pattern_mismatch":
            pattern = str(ctx.get("pattern"))
            expected = _PATTERN_HINTS.get(pattern, f"text matching {pattern}")
            message = f"has an invalid format {given!r}; expected {expected}"
        else:
            message = f"{item['msg']} (got {given!r})"
        problems.append(f"{path}: {message}")
    return problems


def parse_training_job(document: Any, source: str = "manifest") -> TrainingJob:
    """Validate a parsed YAML document as a TrainingJob, raising ManifestError on any problem."""
    if not isinstance(document, dict):
        raise ManifestError(["(top level): a TrainingJob must be a YAML mapping"], source)
    try:
        job = TrainingJob.model_validate(document)
    except ValidationError as error:
        raise ManifestError(format_validation_error(error), source) from None
    if not NAME_PATTERN.match(job.metadata.name):
        raise ManifestError(
            [
                "metadata.name: must be a DNS-1123 label (lower-case letters, digits and '-', "
                f"starting and ending with a letter or digit; got {job.metadata.name!r})"
            ],
            source,
        )
    return job


def load_training_job(path: str | Path) -> TrainingJob:
    """Read and validate a TrainingJob manifest file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ManifestError([f"cannot read the file: {error.strerror}"], str(path)) from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise ManifestError([f"(top level): not valid YAML: {error}"], str(path)) from None
    if len(documents) != 1:
        raise ManifestError(
            [f"(top level): expected one TrainingJob document, found {len(documents)}"], str(path)
        )
    return parse_training_job(documents[0], str(path))
