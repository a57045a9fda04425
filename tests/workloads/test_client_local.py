"""kubetrain.Client with the local executor: the notebook example as a user runs it, and
suspend, resume, logs and a refused spec on a real run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kubetrain import Client
from kubetrain.api.status import Phase
from kubetrain.client import InvalidSpec, NotFound, WaitTimeout
from support import EXAMPLES

SPEC = {"dataset": {"builtin": "digits"}, "model": {"builtin": "mlp", "params":
        {"hiddenUnits": [32]}}, "training": {"epochs": 40, "batchSize": 64}}


def test_the_notebook_example_runs_locally(tmp_path: Path) -> None:
    out = tmp_path / "artifacts"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "notebook" / "digits_client.py"), "--executor", "local",
         "--epochs", "3", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "[progress] training: epoch 3/3" in proc.stdout
    assert "[finding] overfitting: none" in proc.stdout
    assert "e-0" not in proc.stdout.split("TrainingJob digits-")[1]  # money, not 3e-05
    assert (out / "train" / "model.pt").is_file() and (out / "report.md").is_file()
    assert "deleted digits-" in proc.stdout


def test_suspend_stops_the_run_and_resume_continues_it(tmp_path: Path) -> None:
    client = Client("local", storage=tmp_path)
    name = client.submit({"spec": SPEC}, name="pausing").metadata.name
    events = client.watch(name, timeout=120)
    next(e for e in events if e.kind == "progress")  # training has started
    client.suspend(name)
    assert next(e for e in events if e.kind == "phase").message == "phase Suspended"
    lines = list(client.logs(name))
    assert lines == list(client.logs(name, unit="train"))
    client.resume(name)
    job = client.wait(name, timeout=240)
    assert job.status is not None and job.status.phase == Phase.SUCCEEDED
    assert job.status.training is not None and job.status.training.epoch >= 1
    assert (tmp_path / name / "train" / "model.pt").is_file()
    client.delete(name)
    with pytest.raises(NotFound):
        client.status(name)


def test_bad_input_is_refused_before_anything_runs(tmp_path: Path) -> None:
    client = Client("local", storage=tmp_path)
    with pytest.raises(InvalidSpec, match=r"spec\.training\.epochs"):
        client.submit({"spec": {**SPEC, "training": {"epochs": 0}}})
    with pytest.raises(NotFound, match="no TrainingJob 'nope'"):
        client.wait("nope")
    assert client.list() == []


def test_a_wait_that_runs_out_of_time_says_so_and_the_job_goes_on(tmp_path: Path) -> None:
    client = Client("local", storage=tmp_path)
    name = client.submit({"spec": SPEC}).metadata.name
    with pytest.raises(WaitTimeout, match=f"TrainingJob {name} still (Pending|Running)"):
        client.wait(name, timeout=1)
    assert not Phase(client.status(name).phase).terminal
    client.delete(name)  # stops the run
    assert client.list() == []
