"""Fixtures shared by the tests; helpers are in support.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml


@pytest.fixture
def write_manifest(tmp_path: Path) -> Any:
    def write(manifest: dict[str, Any], name: str = "job.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        return path

    return write
