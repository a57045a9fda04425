"""Helpers shared by the tests (imported as `support`; fixtures live in conftest.py)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def base_manifest(**spec_overrides: Any) -> dict[str, Any]:
    """A small, valid TrainingJob (digits MLP, a few epochs) to change in tests."""
    manifest: dict[str, Any] = {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "test-job"},
        "spec": {
            "dataset": {"builtin": "digits", "seed": 0},
            "model": {"builtin": "mlp", "params": {"hiddenUnits": [64]}},
            "training": {"epochs": 4, "batchSize": 64, "learningRate": 0.003},
        },
    }
    manifest["spec"].update(copy.deepcopy(spec_overrides))
    return manifest


def kubetrain(*args: str, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """The kubetrain command as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "kubetrain.cli", *args],
        capture_output=True, text=True, timeout=timeout, **kwargs,
    )
