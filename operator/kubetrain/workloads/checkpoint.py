"""Checkpoints that survive a killed process: written atomically, read back on restart."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

LATEST = "latest.pt"
BEST = "best.pt"


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a kill leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_latest(directory: Path) -> dict[str, Any] | None:
    path = directory / LATEST
    if not path.exists():
        return None
    # Our own files: plain state dicts, histories and numbers.
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


def load_best(directory: Path) -> dict[str, Any] | None:
    path = directory / BEST
    if not path.exists():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state
