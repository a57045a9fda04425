"""Shared base for the TrainingJob models: camelCase on the wire, unknown fields refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """A section of the TrainingJob resource.

    Fields are snake_case in Python and camelCase in YAML, like every Kubernetes resource.
    Unknown fields are refused so that a typo (``learningrate``) is an error, not a silent default.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
        use_attribute_docstrings=True,
    )


class StatusModel(BaseModel):
    """A section of ``status``: camelCase on the wire, tolerant of fields from newer versions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )
