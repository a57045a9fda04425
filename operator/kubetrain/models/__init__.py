"""Built-in networks and the loader for user models (``model.entrypoint``)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..api.spec import BUILTIN_MODEL_PARAMS, ModelSpec


class ModelError(ValueError):
    """A model that cannot be built for this data; the message names the spec field."""


class MLP(nn.Module):
    """Fully connected layers with ReLU, batch norm and dropout, for tabular data."""

    def __init__(
        self, in_features: int, num_outputs: int, hidden_units: Sequence[int], dropout: float
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for units in hidden_units:
            layers += [nn.Linear(width, units), nn.BatchNorm1d(units), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = units
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Any) -> Any:
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks with max pooling and a small classifier, for small images."""

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        channels: Sequence[int],
        hidden_units: int,
        dropout: float,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_channels
        for i, out in enumerate(channels):
            blocks += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            # Pool after every block but the last: 8x8 digits survive two poolings.
            if i < len(channels) - 1:
                blocks.append(nn.MaxPool2d(2))
            width = out
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(width, hidden_units), nn.ReLU()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden_units, num_outputs))
        self.head = nn.Sequential(*head)

    def forward(self, x: Any) -> Any:
        return self.head(self.pool(self.features(x)))


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Any) -> Any:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet-style network (basic blocks, one stage per width) for larger images."""

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        channels: Sequence[int],
        blocks_per_stage: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        width = channels[0]
        for i, out in enumerate(channels):
            for b in range(blocks_per_stage):
                stride = 2 if (i > 0 and b == 0) else 1
                stages.append(BasicBlock(width, out, stride))
                width = out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(width, num_outputs)

    def forward(self, x: Any) -> Any:
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.fc(self.dropout(x))


def build_model(
    spec: ModelSpec, input_shape: tuple[int, ...], num_outputs: int, dropout: float
) -> nn.Module:
    """The network the spec asks for, shaped for this data."""
    if spec.entrypoint:
        return _load_entrypoint(spec.entrypoint, input_shape, num_outputs, dropout,
                                dict(spec.params))
    assert spec.builtin is not None  # the spec guarantees exactly one of the two
    params = {**BUILTIN_MODEL_PARAMS[spec.builtin], **spec.params}
    is_image = len(input_shape) == 3
    if spec.builtin == "mlp":
        features = 1
        for dim in input_shape:
            features *= dim
        return MLP(features, num_outputs, params["hiddenUnits"], dropout)
    if not is_image:
        raise ModelError(
            f"model.builtin: {spec.builtin} needs image data (N, C, H, W) but the dataset is "
            f"tabular with shape {input_shape}; use builtin: mlp"
        )
    if spec.builtin == "cnn":
        hidden = params["hiddenUnits"]
        if isinstance(hidden, list):
            hidden = hidden[0]
        return SmallCNN(input_shape[0], num_outputs, params["channels"], hidden, dropout)
    return ResNet(input_shape[0], num_outputs, params["channels"], params["blocksPerStage"],
                  dropout)


def _load_entrypoint(
    entrypoint: str,
    input_shape: tuple[int, ...],
    num_outputs: int,
    dropout: float,
    params: dict[str, Any],
) -> nn.Module:
    module_name, _, function_name = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(
            f"model.entrypoint: cannot import {module_name!r} ({error}); the module must be "
            "installed in the worker image or on PYTHONPATH"
        ) from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ModelError(f"model.entrypoint: {module_name} has no function {function_name!r}")
    model = factory(input_shape, num_outputs, dropout, **params)
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model.entrypoint: {entrypoint} returned {type(model).__name__}, not a "
            "torch.nn.Module"
        )
    return model
