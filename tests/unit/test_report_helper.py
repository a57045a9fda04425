"""`from kubetrain import report` for your own program: standard library only, rank 0 only."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _run(code: str, **env: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, **env}).stdout


def test_the_helper_imports_no_heavy_dependency() -> None:
    out = _run("import sys; from kubetrain import report; "
               "print(sorted(m for m in sys.modules if m.split('.')[0] in "
               "('torch', 'numpy', 'pydantic', 'yaml', 'optuna')))")
    assert out.strip() == "[]"


def test_the_helper_prints_the_protocol_on_rank_0_only() -> None:
    code = ("from kubetrain import report; report.epoch(2, train_loss=0.5, val_loss=float('nan'));"
            " report.test(accuracy=0.9); report.model('m.ts', epoch=2)")
    lines = [json.loads(line) for line in _run(code, RANK="0").splitlines()]
    assert lines == [
        {"kubetrain": 1, "event": "epoch", "epoch": 2, "train_loss": 0.5, "val_loss": "nan"},
        {"kubetrain": 1, "event": "test", "test_accuracy": 0.9},
        {"kubetrain": 1, "event": "model", "path": "m.ts", "epoch": 2}]
    assert _run(code, RANK="1") == ""
