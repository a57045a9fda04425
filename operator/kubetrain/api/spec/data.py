"""``spec.dataset`` and ``spec.augmentation``: where the data comes from, how it is multiplied."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..base import ApiModel
from ..metrics import Task
from .common import BUILTIN_DATASETS, BUILTIN_TASKS, OBJECT_NAME_PATTERN, FieldProblem


class DatasetCredentials(ApiModel):
    """Credentials for an s3:// dataset (never copied into status, events or logs)."""

    secret: str = Field(pattern=OBJECT_NAME_PATTERN)
    """On Kubernetes: a Secret in the job's namespace with AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY (optionally AWS_SESSION_TOKEN), given only to the data stage's pod.
    The local executor takes the same variables from its environment."""


class DatasetSpec(ApiModel):
    """Where the data comes from and how it is split. Set exactly one of builtin or uri."""

    builtin: Literal["digits", "breast_cancer", "wine", "iris", "diabetes"] | None = None
    """A dataset shipped inside scikit-learn (no download). diabetes is a regression set."""
    uri: str | None = Field(default=None, min_length=1)
    """A file or folder: a path (relative to the manifest), pvc://claim/path on Kubernetes,
    s3://bucket/key (a prefix ending in / for an imagefolder or shards) or
    https://host/file. Remote data is fetched once per version (ETag) into the job's storage
    by the data stage."""
    endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/.*)?$")
    """S3-compatible endpoint URL for s3:// URIs (MinIO, Ceph, ...); default: AWS S3."""
    credentials: DatasetCredentials | None = None
    format: Literal["npz", "csv", "parquet", "imagefolder", "shards"] | None = None
    """File format of uri: npz (arrays X and y), csv or parquet (one column is the target),
    imagefolder (one subfolder per class), shards (a folder of .npz files, each with X and y of
    the same row shape and dtype, read in name order). Inferred from the file extension when
    unset; a folder needs it."""
    target: str | None = None
    """Name of the target column for csv and parquet."""
    task: Literal["auto", "classification", "regression"] = "auto"
    """auto: classification for integer or string targets with few values, else regression."""
    validation_split: float = Field(default=0.15, gt=0, lt=0.5)
    """Fraction of the data held out for validation (early stopping, findings)."""
    test_split: float = Field(default=0.15, ge=0, lt=0.5)
    """Fraction of the data held out for the final test metrics; 0 disables the test split."""
    fraction: float = Field(default=1.0, gt=0, le=1)
    """Use only this fraction of the training split (to study scarce data)."""
    seed: int = Field(default=0, ge=0)
    """Seed of the splits, the initial weights and the data order."""
    streaming: Literal["auto", "always", "never"] = "auto"
    """imagefolder and shards only: read rows from disk batch by batch (DataLoader workers; a
    shard at a time, in a shard-grouped order) instead of holding them all in memory. auto: when
    the decoded rows would take more than half of the training unit's memory
    (training.resources.memory / nprocPerNode)."""

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.builtin is None) == (self.uri is None):
            raise ValueError(
                f"set exactly one of `builtin` ({', '.join(BUILTIN_DATASETS)}) or `uri` "
                "(a file or folder)"
            )
        if self.uri is not None:
            fmt = self.format or infer_format(self.uri)
            if fmt is None:
                raise FieldProblem(
                    "format",
                    "required when `uri` has no known extension; "
                    "allowed: npz, csv, parquet, imagefolder, shards",
                )
            if fmt in ("csv", "parquet") and not self.target:
                raise FieldProblem("target", f"required for format {fmt}: the label column's name")
        if (self.endpoint or self.credentials) and not (self.uri or "").startswith("s3://"):
            raise FieldProblem("endpoint" if self.endpoint else "credentials",
                               "applies to s3:// URIs only")
        if self.builtin is not None and (self.format or self.target):
            raise FieldProblem(
                "format" if self.format else "target",
                "applies to `uri` datasets only; remove it for a `builtin` dataset",
            )
        if self.validation_split + self.test_split >= 0.8:
            raise FieldProblem(
                "validationSplit",
                f"validationSplit + testSplit is {self.validation_split + self.test_split:g}; "
                "it must be below 0.8 to leave at least 20% to train",
            )
        return self

    @property
    def remote(self) -> bool:
        """An s3:// or https:// uri: the data stage fetches it into the job's storage."""
        return is_remote(self.uri)

    @property
    def is_folder(self) -> bool:
        """The uri names a folder (an s3:// prefix), not a file."""
        return self.resolved_format in FOLDER_FORMATS

    @property
    def resolved_format(self) -> str | None:
        return self.format or (infer_format(self.uri) if self.uri else None)

    @property
    def declared_task(self) -> Task | None:
        """The task known before the data is read: ``task`` when set, else the built-in
        dataset's; None for ``task: auto`` on a ``uri`` (the target's values decide)."""
        if self.task != "auto":
            return self.task
        return BUILTIN_TASKS[self.builtin] if self.builtin is not None else None


REMOTE_SCHEMES = ("s3://", "https://", "http://")
FOLDER_FORMATS = ("imagefolder", "shards")


def is_remote(uri: str | None) -> bool:
    """Whether a dataset uri is fetched by the data stage (object storage or the web)."""
    return bool(uri) and str(uri).startswith(REMOTE_SCHEMES)


def infer_format(uri: str) -> str | None:
    """The dataset format implied by a file extension, if any."""
    lowered = uri.lower().rstrip("/")
    for ext, fmt in ((".npz", "npz"), (".csv", "csv"), (".parquet", "parquet"), (".pq", "parquet")):
        if lowered.endswith(ext):
            return fmt
    return None


class ImageAugmentationSpec(ApiModel):
    """Image transforms (kornia). Applied to the training split only."""

    rotation: float = Field(default=10.0, ge=0, le=180)
    """Maximum rotation in degrees."""
    translate: float = Field(default=0.1, ge=0, le=0.5)
    """Maximum shift as a fraction of the image size."""
    scale: list[float] = Field(default_factory=lambda: [0.9, 1.1], min_length=2, max_length=2)
    """Range of zoom factors [min, max]."""
    horizontal_flip: bool = False
    """Flip left-right; leave off for digits and text, where a flip changes the class."""
    vertical_flip: bool = False
    """Flip upside-down."""
    noise_std: float = Field(default=0.05, ge=0, le=1)
    """Standard deviation of Gaussian noise, in units of the normalized pixel values."""
    erasing: float = Field(default=0.0, ge=0, le=1)
    """Probability of random erasing of a rectangle."""
    mixup: float = Field(default=0.0, ge=0, le=10)
    """Mixup alpha at training time; 0 disables."""
    cutmix: float = Field(default=0.0, ge=0, le=10)
    """CutMix alpha at training time; 0 disables."""

    @model_validator(mode="after")
    def _scale_range(self) -> ImageAugmentationSpec:
        low, high = self.scale
        if not 0 < low <= high <= 4:
            raise FieldProblem(
                "scale", f"must be [min, max] with 0 < min <= max <= 4 (got {self.scale})"
            )
        return self


class TabularAugmentationSpec(ApiModel):
    """Tabular augmentation. Applied to the training split only."""

    noise: float = Field(default=0.0, ge=0, le=1)
    """Gaussian noise on numeric columns, in standard deviations of each column."""
    smote: bool = False
    """Oversample minority classes with SMOTE (classification only)."""
    smote_neighbors: int = Field(default=5, ge=1, le=50)
    """k nearest neighbours SMOTE interpolates between."""


class AugmentationSpec(ApiModel):
    """The augmentation stage: more training data from the data you have."""

    enabled: bool = False
    """Run the augmentation stage before training."""
    multiplier: int = Field(default=2, ge=1, le=100)
    """Augmented copies of each training example (on top of the originals)."""
    shards: int = Field(default=1, ge=1, le=64)
    """Workers that each augment a part of the training split (then a merge step)."""
    parallelism: int = Field(default=4, ge=1, le=64)
    """Shards running at once (each a process, or a pod on Kubernetes)."""
    image: ImageAugmentationSpec | None = None
    tabular: TabularAugmentationSpec | None = None
