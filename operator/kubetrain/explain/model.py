"""The trained model and the data the explanation stage explains.

The training work unit saves ``<storage>/train/model.pt``: the state dict, the model spec, the
data's shape and the fitted standardizer. Here the network is rebuilt from that spec, the
dataset is split exactly as training split it, and the rows are standardized with the saved
standardizer, so the explained inputs are the inputs the network saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..api.spec import DatasetSpec, ModelSpec
from ..data import Standardizer, load_dataset, split_dataset
from ..data.images import decoded
from ..models import build_model


class ExplainError(ValueError):
    """The explanation cannot run; the message says what to do."""


@dataclass
class TrainedModel:
    """A network rebuilt from ``model.pt``, in eval mode, with what it was trained on."""

    model: nn.Module
    input_shape: tuple[int, ...]
    num_outputs: int
    task: str
    """classification or regression."""
    kind: str
    """tabular or image."""
    standardizer: Standardizer
    feature_names: list[str]
    class_names: list[str] = field(default_factory=list)
    target_mean: float = 0.0
    target_std: float = 1.0
    """Regression: the network predicts (y - mean) / std; explanations are reported in y units."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def output_scale(self) -> float:
        """Factor from the network's output to the reported units (target std for regression)."""
        return self.target_std if self.task == "regression" else 1.0

    @property
    def output_offset(self) -> float:
        return self.target_mean if self.task == "regression" else 0.0

    @property
    def output_name(self) -> str:
        return "prediction" if self.task == "regression" else "logit of the predicted class"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


EXPORTED_SUFFIXES = (".ts", ".pt2")
"""A custom program's model (training.command): TorchScript (.ts) or torch.export (.pt2)."""


def trained_model_path(storage: Path) -> Path:
    """The final training's model: the built-in trainer's model.pt, else a custom program's
    model.ts or model.pt2 (the first that exists; model.pt when none does)."""
    unit_dir = storage / "train"
    for name in ("model.pt", *(f"model{s}" for s in EXPORTED_SUFFIXES)):
        if (unit_dir / name).exists():
            return unit_dir / name
    return unit_dir / "model.pt"


def load_exported_model(path: Path, device: torch.device) -> TrainedModel:
    """A custom program's model: it takes the rows of ``data/*.npz`` as they are (its own
    scaling inside), with the shape and names the runner wrote to ``data/meta.json``."""
    meta_path = path.parent / "data" / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ExplainError(f"no data description at {meta_path} ({error}): the model was not "
                           "saved by a training.command unit") from error
    try:
        if path.suffix == ".ts":
            model: nn.Module = torch.jit.load(str(path), map_location=device)
        else:
            model = torch.export.load(str(path)).module().to(device)
    except Exception as error:
        raise ExplainError(f"cannot load {path} ({type(error).__name__}: {error}); save "
                           "TorchScript with torch.jit.save(torch.jit.script(model)) or "
                           "torch.export.save(torch.export.export(model, (x,)))") from error
    if path.suffix == ".ts":
        model.eval()  # an exported program is traced in the mode it was exported in
    for param in model.parameters():
        param.requires_grad_(False)
    input_shape = tuple(int(d) for d in meta["input_shape"])
    n_features = int(np.prod(input_shape))
    names = [str(n) for n in meta.get("feature_names") or []]
    return TrainedModel(
        model=model, input_shape=input_shape, num_outputs=int(meta["num_outputs"]),
        task=str(meta["task"]), kind=str(meta["kind"]),
        standardizer=_identity(input_shape),
        feature_names=names if len(names) == n_features else [f"x{i}" for i in
                                                               range(n_features)],
        class_names=[str(c) for c in meta.get("class_names") or []], device=device)


def _identity(input_shape: tuple[int, ...]) -> Standardizer:
    """No scaling: a custom model scales its own inputs."""
    width = input_shape[0]
    return Standardizer(mean=np.zeros(width, dtype=np.float32),
                        std=np.ones(width, dtype=np.float32))


def load_trained_model(path: Path, device: torch.device | None = None) -> TrainedModel:
    """Rebuild the trained network from ``model.pt``; a clear error when it is missing."""
    if path.suffix in EXPORTED_SUFFIXES and path.exists():
        return load_exported_model(path, device or default_device())
    if not path.exists():
        raise ExplainError(
            f"no trained model at {path}: run the training stage first "
            "(the explanation stage explains the model that training saves)"
        )
    device = device or default_device()
    try:
        saved: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise ExplainError(f"cannot read the trained model {path}: {error}") from error
    missing = [k for k in ("state_dict", "model", "input_shape", "num_outputs", "task",
                           "standardizer") if k not in saved]
    if missing:
        raise ExplainError(f"{path} is not a kubetrain model file (missing {', '.join(missing)})")
    spec = ModelSpec.model_validate(saved["model"])
    input_shape = tuple(int(d) for d in saved["input_shape"])
    num_outputs = int(saved["num_outputs"])
    model = build_model(spec, input_shape, num_outputs, float(saved.get("dropout", 0.0)))
    model.load_state_dict(saved["state_dict"])
    model.to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    target = saved.get("target") or {}
    kind = str(saved.get("kind") or ("image" if len(input_shape) == 3 else "tabular"))
    n_features = int(np.prod(input_shape))
    names = [str(n) for n in saved.get("feature_names") or []]
    if len(names) != n_features:
        names = [f"x{i}" for i in range(n_features)]
    return TrainedModel(
        model=model,
        input_shape=input_shape,
        num_outputs=num_outputs,
        task=str(saved["task"]),
        kind=kind,
        standardizer=Standardizer.from_dict(saved["standardizer"]),
        feature_names=names,
        class_names=[str(c) for c in saved.get("class_names") or []],
        target_mean=float(target.get("mean", 0.0)),
        target_std=float(target.get("std", 1.0)) or 1.0,
        device=device,
    )


@dataclass
class ExplainData:
    """Standardized rows: the background (reference) and the samples to explain."""

    background: np.ndarray
    samples: np.ndarray
    samples_raw: np.ndarray
    """The samples before standardization, for plots in the data's own units."""
    sample_indices: np.ndarray
    """Row numbers of the samples in the original dataset."""
    sample_split: str
    """test, or val when the test split is empty."""
    background_indices: np.ndarray


def select_data(trained: TrainedModel, dataset_spec: DatasetSpec, *, samples: int,
                background: int, base_dir: Path | None = None,
                data_root: Path | None = None, storage: Path | None = None) -> ExplainData:
    """The job's splits, as training made them: background from train, samples from test.

    The background is ``background`` training rows drawn with the dataset seed; the samples are
    the first ``samples`` rows of the test split (the validation split when testSplit is 0).
    """
    dataset = load_dataset(dataset_spec, base_dir=base_dir, data_root=data_root,
                           storage=storage)
    if tuple(dataset.input_shape) != trained.input_shape:
        raise ExplainError(
            f"the dataset's rows have shape {dataset.input_shape} but the model was trained on "
            f"{trained.input_shape}: the data changed since training; run the training stage again"
        )
    splits = split_dataset(dataset, dataset_spec)
    X_train = splits.train[0]
    rng = np.random.default_rng(dataset_spec.seed)
    n_bg = min(background, len(X_train))
    bg_pos = np.sort(rng.choice(len(X_train), size=n_bg, replace=False))
    split_name, (X_s, _) = ("test", splits.test) if len(splits.test[0]) else ("val", splits.val)
    n_s = min(samples, len(X_s))
    if n_s == 0:
        raise ExplainError("no rows to explain: the test and validation splits are empty")
    raw = np.ascontiguousarray(decoded(X_s[:n_s]), dtype=np.float32)
    return ExplainData(
        background=trained.standardizer.transform(decoded(X_train[bg_pos])),
        samples=trained.standardizer.transform(raw),
        samples_raw=raw,
        sample_indices=splits.indices[split_name][:n_s],
        sample_split=split_name,
        background_indices=splits.indices["train"][bg_pos],
    )
