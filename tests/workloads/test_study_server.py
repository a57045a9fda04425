"""The study server (``python -m kubetrain.tuning.serve``) and its client: a trial and the
sweep's summary reach the study through it, and their calls wait for a server that is away."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import optuna
import pytest
from kubetrain.report import parse_event
from kubetrain.tuning.grpc_proxy import StudyServerProxy
from support import free_port
from test_tune import open_study, run_unit, sweep_manifest


def test_a_trial_and_the_summary_reach_the_study_through_the_study_server(
        tmp_path: Path, write_manifest: Any) -> None:
    manifest = sweep_manifest()
    job, storage, port = write_manifest(manifest), tmp_path / "storage", free_port()
    server = _study_server(job, storage, port)
    try:
        address = f"127.0.0.1:{port}"
        trial = subprocess.run(
            [sys.executable, "-m", "kubetrain.workloads.trial", "--job", str(job),
             "--storage", str(storage), "--study", "test-job", "--study-server", address,
             "--sampler-seed", "0"],
            capture_output=True, text=True, timeout=300)
        assert trial.returncode == 0, trial.stderr[-3000:]
        events = [e for e in map(parse_event, trial.stdout.splitlines()) if e]
        assert events[0]["event"] == "trial" and events[0]["state"] == "running"
        result = events[-1]["summary"]
        assert result["state"] == "complete" and result["epochs_run"] == 2
        code, _, summary, stderr = run_unit(job, storage, "--summarize",
                                            "--study-server", address)
        assert code == 0, stderr[-3000:]
        assert summary["trials"]["complete"] == 1 and summary["orphaned_failed"] == []
        assert summary["best"] == {"trial": 0, "params": result["params"],
                                   "value": result["value"]}
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, server.stderr and server.stderr.read()
    # The server wrote the journal in the job's storage: the study outlives it.
    stored = open_study(storage).trials
    assert [(t.number, t.state, t.value) for t in stored] == [
        (0, optuna.trial.TrialState.COMPLETE, result["value"])]
    assert stored[0].intermediate_values.keys() == {1, 2}


def _study_server(job: Path, storage: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kubetrain.tuning.serve", "--storage", str(storage),
         "--port", str(port), "--host", "127.0.0.1", "--job", str(job)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_study_server_calls_wait_for_a_server_that_is_away(tmp_path: Path,
                                                           write_manifest: Any) -> None:
    """A trial's calls wait for a study server that is not there yet, or is gone for a while
    (a pod restarting, a Service routed late after an API-server outage), instead of failing:
    Optuna's own proxy fails at once."""
    job, storage, port = write_manifest(sweep_manifest()), tmp_path / "storage", free_port()
    with pytest.raises(grpc.RpcError) as failed:
        optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port).get_all_studies()
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    proxy = StudyServerProxy(host="127.0.0.1", port=port, wait_seconds=120)
    answers: list[list[str]] = []

    def ask() -> None:
        answers.append([s.study_name for s in proxy.get_all_studies()])

    servers = []
    try:
        for _ in range(2):  # first not started yet, then stopped and started again
            caller = threading.Thread(target=ask)
            caller.start()
            caller.join(3)
            assert caller.is_alive() and not answers[len(servers):], "the call did not wait"
            servers.append(_study_server(job, storage, port))
            caller.join(90)
            assert answers[len(servers) - 1] == ["test-job"]
            servers[-1].send_signal(signal.SIGTERM)
            assert servers[-1].wait(timeout=30) == 0, servers[-1].stderr.read()
    finally:
        for server in servers:
            if server.poll() is None:
                server.kill()
    with pytest.raises(grpc.RpcError) as late:  # nobody there for good: it gives up in time
        StudyServerProxy(host="127.0.0.1", port=port, wait_seconds=2).get_all_studies()
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
