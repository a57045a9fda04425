"""What the spec's sections share: the error that names a field, the built-in datasets and models,
the name patterns."""

from __future__ import annotations

from ..metrics import Task

# The task of each built-in dataset, which `task: auto` takes without reading the data.
BUILTIN_TASKS: dict[str, Task] = {
    "digits": "classification",
    "breast_cancer": "classification",
    "wine": "classification",
    "iris": "classification",
    "diabetes": "regression",
}
BUILTIN_DATASETS = tuple(BUILTIN_TASKS)
# A Kubernetes object name (DNS-1123 subdomain, without the length limit).
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
# The parameters of each built-in model with their defaults; any other key is a typo.
# Defaults are tuples so that no caller can change the table by changing its model's params.
BUILTIN_MODEL_PARAMS: dict[str, dict[str, int | tuple[int, ...]]] = {
    "mlp": {"hiddenUnits": (128, 64)},
    "cnn": {"channels": (32, 64), "hiddenUnits": 128},
    "resnet": {"channels": (32, 64, 128), "blocksPerStage": 2},
}


class FieldProblem(ValueError):
    """A failed check across fields, naming the field to blame (relative to the checked model).

    ``format_validation_error`` appends ``field`` to the model's path, so users read
    ``spec.training.precision: fp16 needs GPUs ...`` rather than ``spec.training: ...``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
