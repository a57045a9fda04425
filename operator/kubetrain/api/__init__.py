"""The TrainingJob API: spec and status models, the single source of truth for the CRD."""

from .resource import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ManifestError,
    TrainingJob,
    load_training_job,
    parse_training_job,
)
from .spec import TrainingJobSpec
from .status import TrainingJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "ManifestError",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
    "load_training_job",
    "parse_training_job",
]
