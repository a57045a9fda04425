"""Checks of the augmentation section that need the data (image or tabular, task)."""

from __future__ import annotations

from ..api.spec import TrainingJobSpec
from ..data import Dataset


class AugmentationError(ValueError):
    """Augmentation cannot run as asked; the message starts with the spec field at fault."""


class AugmentationSpecError(AugmentationError):
    """The spec asks for augmentation this data cannot have: no run would succeed."""


def check_augmentation(spec: TrainingJobSpec, dataset: Dataset) -> None:
    """Refuse settings that do not fit the dataset, naming the field (relative to ``spec``)."""
    aug = spec.augmentation
    if dataset.kind == "image" and aug.tabular is not None:
        raise AugmentationSpecError(
            f"augmentation.tabular: applies to tabular data; {dataset.name} holds images: "
            "use augmentation.image"
        )
    if dataset.kind == "tabular" and aug.image is not None:
        raise AugmentationSpecError(
            f"augmentation.image: applies to images; {dataset.name} is tabular: "
            "use augmentation.tabular (noise, smote)"
        )
    if aug.tabular is not None and aug.tabular.smote and dataset.task != "classification":
        raise AugmentationSpecError(
            "augmentation.tabular.smote: SMOTE oversamples minority classes and needs a "
            f"classification dataset; {dataset.name} is a regression dataset: set smote: false "
            "(noise still applies)"
        )
    if aug.image is not None and dataset.task != "classification":
        for name in ("mixup", "cutmix"):
            if getattr(aug.image, name) > 0:
                raise AugmentationSpecError(
                    f"augmentation.image.{name}: mixes class labels and needs a classification "
                    f"dataset; {dataset.name} is a regression dataset: set {name}: 0"
                )
