"""The TrainingJob ``spec``: the single source of truth for the manifest and the CRD schema.

One module per section of the spec (``data``, ``training``, ``tuning``, ``findings``; ``job``
holds the run policy, storage, tracking and the whole spec with its checks across sections;
``common`` what they share); every name is importable from here.

Field docstrings become the CRD's descriptions (``kubectl explain trainingjob.spec.training``).
Checks that need several fields at once live in ``model_validator``s here; checks that need the
data (is the dataset tabular or images?) live in the planner.
"""

from __future__ import annotations

from .common import (
    BUILTIN_DATASETS,
    BUILTIN_MODEL_PARAMS,
    BUILTIN_TASKS,
    CURRENCY_PATTERN,
    ENTRYPOINT_PATTERN,
    OBJECT_NAME_PATTERN,
    FieldProblem,
)
from .data import (
    FOLDER_FORMATS,
    REMOTE_SCHEMES,
    AugmentationSpec,
    DatasetCredentials,
    DatasetSpec,
    ImageAugmentationSpec,
    TabularAugmentationSpec,
    infer_format,
    is_remote,
)
from .findings import (
    BudgetSpec,
    CostSpec,
    ExplanationSpec,
    FindingsSpec,
    OverfittingSpec,
    PricesSpec,
    RemediableVerdict,
    RemediationSpec,
)
from .job import (
    MLFLOW_CREDENTIAL_KEYS,
    NAME_PATTERN,
    MlflowSpec,
    RunPolicySpec,
    StorageSpec,
    TrackingCredentials,
    TrackingSpec,
    TrainingJobSpec,
)
from .training import (
    PARAM_NAME_PATTERN,
    PLACEHOLDER,
    PLACEHOLDER_NAMES,
    CheckpointSpec,
    CrossValidationSpec,
    EarlyStoppingSpec,
    ModelSpec,
    ResourcesSpec,
    TrainingSpec,
    placeholder_problems,
)
from .tuning import (
    MULTI_OBJECTIVE_SAMPLERS,
    RESOURCE_OBJECTIVES,
    TUNABLE_PARAMETERS,
    TUNABLE_PREFIX_MODEL,
    ObjectiveName,
    ObjectiveSpec,
    SearchDimension,
    SelectionSpec,
    TuningObjectiveSpec,
    TuningSpec,
)

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_MODEL_PARAMS",
    "BUILTIN_TASKS",
    "CURRENCY_PATTERN",
    "ENTRYPOINT_PATTERN",
    "FOLDER_FORMATS",
    "MLFLOW_CREDENTIAL_KEYS",
    "MULTI_OBJECTIVE_SAMPLERS",
    "NAME_PATTERN",
    "OBJECT_NAME_PATTERN",
    "PARAM_NAME_PATTERN",
    "PLACEHOLDER",
    "PLACEHOLDER_NAMES",
    "REMOTE_SCHEMES",
    "RESOURCE_OBJECTIVES",
    "TUNABLE_PARAMETERS",
    "TUNABLE_PREFIX_MODEL",
    "AugmentationSpec",
    "BudgetSpec",
    "CheckpointSpec",
    "CostSpec",
    "CrossValidationSpec",
    "DatasetCredentials",
    "DatasetSpec",
    "EarlyStoppingSpec",
    "ExplanationSpec",
    "FieldProblem",
    "FindingsSpec",
    "ImageAugmentationSpec",
    "MlflowSpec",
    "ModelSpec",
    "ObjectiveName",
    "ObjectiveSpec",
    "OverfittingSpec",
    "PricesSpec",
    "RemediableVerdict",
    "RemediationSpec",
    "ResourcesSpec",
    "RunPolicySpec",
    "SearchDimension",
    "SelectionSpec",
    "StorageSpec",
    "TabularAugmentationSpec",
    "TrackingCredentials",
    "TrackingSpec",
    "TrainingJobSpec",
    "TrainingSpec",
    "TuningObjectiveSpec",
    "TuningSpec",
    "infer_format",
    "is_remote",
    "placeholder_problems",
]
