"""The tuning stage as it runs: a real Optuna study, real trial processes, tiny trainings."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from kubetrain.api.spec import TrainingJobSpec
from kubetrain.pipeline.params import apply_params
from kubetrain.tuning import space as sp
from kubetrain.tuning import study as st
from kubetrain.report import MAX_RESULT_BYTES, parse_event
from kubetrain.workloads.tune import target_trials
from pydantic import ValidationError
from support import base_manifest

SPACE = {"learningRate": {"type": "float", "low": 1e-4, "high": 0.05, "log": True}}
# Clearly bad values at the low end: 1e-6 barely moves the weights in a few epochs.
WIDE_SPACE = {"learningRate": {"type": "float", "low": 1e-6, "high": 0.1, "log": True}}


def sweep_manifest(epochs: int = 2, **tuning: Any) -> dict[str, Any]:
    settings = {"enabled": True, "sampler": "tpe", "pruner": "none", "trials": 3,
                "parallelism": 1, "searchSpace": SPACE,
                "objective": {"metric": "val_accuracy", "direction": "maximize"}, **tuning}
    return base_manifest(
        model={"builtin": "mlp", "params": {"hiddenUnits": [32]}},
        training={"epochs": epochs, "batchSize": 64, "learningRate": 0.003},
        tuning=settings,
    )


def spec_of(manifest: dict[str, Any]) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(manifest["spec"])


def run_driver(job: Path, storage: Path,
               on_event: Callable[[dict[str, Any]], None] | None = None,
               timeout: float = 400) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """The sweep driver as the executor runs it: its events, exit code and result file."""
    result_file = storage / "tune" / "result.json"
    result_file.unlink(missing_ok=True)
    storage.mkdir(parents=True, exist_ok=True)
    with (storage / "driver-stderr.txt").open("a") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubetrain.workloads.tune", "--job", str(job),
             "--storage", str(storage), "--result", str(result_file)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)
        events = []
        deadline = time.time() + timeout
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                event = parse_event(line)
                if event is not None:
                    events.append(event)
                    if on_event is not None:
                        on_event(event)
                assert time.time() < deadline, "the sweep took too long"
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert result_file.exists(), (storage / "driver-stderr.txt").read_text()[-3000:]
    assert len(result_file.read_bytes()) <= MAX_RESULT_BYTES
    return code, events, json.loads(result_file.read_text())


def trial_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "trial"]


def table(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {row["number"]: row for row in json.loads(Path(result["trials_table"]).read_text())}


def open_study(storage: Path, name: str = "test-job") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=st.open_storage(storage))


# ----- the library ------------------------------------------------------------------------


SAMPLERS = {"grid": optuna.samplers.GridSampler, "random": optuna.samplers.RandomSampler,
            "tpe": optuna.samplers.TPESampler, "cmaes": optuna.samplers.CmaEsSampler,
            "gp": optuna.samplers.GPSampler}
PRUNERS = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
           "hyperband": optuna.pruners.HyperbandPruner,
           "successive-halving": optuna.pruners.SuccessiveHalvingPruner}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_is_built_seeded_and_samples_the_space(sampler: str) -> None:
    space = {"learningRate": {"type": "float", "low": 1e-4, "high": 0.1, "log": sampler != "grid",
                              "step": 0.025 if sampler == "grid" else None},
             "batchSize": {"type": "int", "low": 32, "high": 128, "step": 32},
             "model.hiddenUnits": {"type": "categorical", "choices": [[16], [64, 32]]}}
    spec = spec_of(sweep_manifest(sampler=sampler, searchSpace=space, trials=6))

    def sample(seed: int) -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=st.make_sampler(spec, seed=seed),
                                    direction="maximize")
        drawn = []
        for _ in range(4):
            trial = study.ask(sp.distributions(spec.tuning.search_space))
            params = sp.decode_params(spec.tuning.search_space, trial.params)
            study.tell(trial, params["learningRate"] * params["batchSize"])
            drawn.append(params)
        return drawn

    assert isinstance(st.make_sampler(spec), SAMPLERS[sampler])
    first = sample(7)
    assert first == sample(7), "the same seed must draw the same trials"
    for params in first:
        assert 1e-4 <= params["learningRate"] <= 0.1
        assert params["batchSize"] in (32, 64, 96, 128)
        assert params["model.hiddenUnits"] in ([16], [64, 32])  # lists, not their JSON text
        apply_params(spec, params)  # what the final training does with the best params


def test_a_sampler_whose_package_is_missing_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = st.importlib.util.find_spec
    monkeypatch.setattr(st.importlib.util, "find_spec",
                        lambda name: None if name == "cmaes" else real(name))
    with pytest.raises(st.TuningUnavailable, match="pip install cmaes"):
        st.make_sampler(spec_of(sweep_manifest(sampler="cmaes")))


@pytest.mark.parametrize("pruner", sorted(PRUNERS))
def test_every_pruner_is_built(pruner: str) -> None:
    assert isinstance(st.make_pruner(spec_of(sweep_manifest(pruner=pruner))), PRUNERS[pruner])


def test_grid_needs_steps_and_enumerates_every_point_once() -> None:
    with pytest.raises(ValidationError, match="step"):
        spec_of(sweep_manifest(sampler="grid"))  # SPACE has no step
    space = {"learningRate": {"type": "float", "low": 0.01, "high": 0.035, "step": 0.01},
             "batchSize": {"type": "int", "low": 16, "high": 64, "step": 24},
             "model.hiddenUnits": {"type": "categorical", "choices": [[8], [16, 8]]}}
    spec = spec_of(sweep_manifest(sampler="grid", searchSpace=space, trials=100))
    grid = sp.grid_search_space(spec.tuning.search_space)
    assert grid["learningRate"] == [0.01, 0.02, 0.03]
    assert grid["batchSize"] == [16, 40, 64]
    assert sp.grid_size(spec.tuning.search_space) == 18
    assert target_trials(spec) == 18  # not the 100 trials asked for

    study = optuna.create_study(sampler=st.make_sampler(spec))
    seen = set()
    for _ in range(18):
        trial = study.ask(sp.distributions(spec.tuning.search_space))
        params = sp.decode_params(spec.tuning.search_space, trial.params)
        seen.add((params["learningRate"], params["batchSize"],
                  tuple(params["model.hiddenUnits"])))
        study.tell(trial, 0.0)
    assert len(seen) == 18


def test_summary_counts_states_and_fails_only_orphans(tmp_path: Path) -> None:
    spec = spec_of(sweep_manifest())
    study = st.create_study_once(st.open_storage(tmp_path), "s", spec)
    again = st.create_study_once(st.open_storage(tmp_path), "s", spec)  # loads, no error
    dists = sp.distributions(spec.tuning.search_space)
    for value in (0.5, 0.9):
        trial = study.ask(dists)
        trial.report(value, 1)
        study.tell(trial, value)
    pruned = study.ask(dists)
    pruned.report(0.1, 1)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    alive, dead = study.ask(dists), study.ask(dists)
    assert st.fail_orphaned_trials(again, alive_numbers={alive.number}) == [dead.number]
    summary = st.summarize(study, spec.tuning.search_space)
    assert summary["trials"] == {"total": 5, "running": 1, "complete": 2, "pruned": 1,
                                 "failed": 1}
    assert summary["best"]["trial"] == 1 and summary["best"]["value"] == 0.9
    assert set(summary["importances"]) == {"learningRate"}
    totals = st.sweep_totals(study.get_trials(), spec)
    assert totals["epochs_saved_by_pruning"] == 1  # 2 epochs planned, pruned after 1


# ----- the work units -----------------------------------------------------------------------


def test_sweep_runs_parallel_trials_to_the_budget_and_names_the_best(
        tmp_path: Path, write_manifest: Any) -> None:
    manifest = sweep_manifest(trials=4, parallelism=2)
    job, storage = write_manifest(manifest), tmp_path / "storage"
    code, events, result = run_driver(job, storage)
    assert code == 0, result
    assert result["status"] == "succeeded"
    assert result["trials"] == {"total": 4, "running": 0, "complete": 4, "pruned": 0,
                                "failed": 0}
    rows = table(result)
    assert sorted(rows) == [0, 1, 2, 3]
    best = max(rows.values(), key=lambda r: r["value"])
    assert result["best"] == {"trial": best["number"], "params": best["params"],
                              "value": best["value"]}
    assert result["best"]["value"] > 0.5
    assert result["epochs_run"] == 8 and result["epochs_saved_by_pruning"] == 0
    assert result["trial_seconds"] > 0
    assert len({json.dumps(r["params"]) for r in rows.values()}) == 4, "trials drew alike"
    # Live table: each trial shows running, its epochs, then its end, with counts and best.
    for number in rows:
        mine = [e for e in trial_events(events) if e["number"] == number]
        assert mine[0]["state"] == "running" and mine[-1]["state"] == "complete"
        assert [e["epoch"] for e in mine if e["state"] == "running"] == [0, 1, 2]
    last = trial_events(events)[-1]
    assert last["counts"]["complete"] == 4 and last["best"] == result["best"]
    # Each trial trained in its own folder, and its model is there.
    assert all((storage / "tuning" / f"trial-{n}" / "model.pt").exists() for n in rows)


def test_a_killed_trial_is_failed_and_the_sweep_goes_on(tmp_path: Path,
                                                        write_manifest: Any) -> None:
    job = write_manifest(sweep_manifest(epochs=3, trials=3, parallelism=1))
    storage = tmp_path / "storage"
    killed: list[int] = []

    def kill_first(event: dict[str, Any]) -> None:
        if event["event"] == "trial" and event["state"] == "running" and not killed:
            killed.append(event["number"])
            # SIGKILL: no chance to tell the study, as when a node dies or the OOM killer hits.
            os.killpg(event["pid"], signal.SIGKILL)

    code, events, result = run_driver(job, storage, on_event=kill_first)
    assert code == 0, result
    assert killed == [0]
    rows = table(result)
    assert rows[0]["state"] == "failed"
    assert result["trials"] == {"total": 3, "running": 0, "complete": 2, "pruned": 0,
                                "failed": 1}
    assert result["best"]["trial"] in (1, 2)
    failed = [e for e in trial_events(events) if e["number"] == 0 and e["state"] == "failed"]
    assert failed and "code -9" in failed[0]["error"]


def test_a_rerun_continues_the_stored_study(tmp_path: Path, write_manifest: Any) -> None:
    storage = tmp_path / "storage"
    job = write_manifest(sweep_manifest(trials=2, parallelism=2))
    code, _, first = run_driver(job, storage)
    assert code == 0 and first["trials"]["complete"] == 2
    before = table(first)
    # A driver killed with its trial: the study still has a RUNNING trial nobody runs.
    spec = spec_of(sweep_manifest(trials=4))
    orphan = open_study(storage).ask(sp.distributions(spec.tuning.search_space))

    job = write_manifest(sweep_manifest(trials=4, parallelism=2))
    code, events, second = run_driver(job, storage)
    assert code == 0, second
    start = next(e for e in events if e["event"] == "start")
    assert start["orphaned_failed"] == [orphan.number] and start["finished"] == 3
    after = table(second)
    assert sorted(after) == [0, 1, 2, 3]
    assert {n: after[n] for n in before} == before, "earlier trials must stay as they were"
    assert after[orphan.number]["state"] == "failed"
    assert {e["number"] for e in trial_events(events)} == {3}, "only the missing trial runs"
    assert second["trials"]["total"] == 4 and second["trials"]["running"] == 0

    code, events, third = run_driver(job, storage)  # nothing left to do
    assert code == 0 and trial_events(events) == []
    assert third["trials"] == second["trials"] and third["best"] == second["best"]


def test_median_pruning_stops_bad_trials_across_processes(tmp_path: Path,
                                                          write_manifest: Any) -> None:
    job = write_manifest(sweep_manifest(epochs=3, trials=6, parallelism=2, sampler="random",
                                        pruner="median", searchSpace=WIDE_SPACE))
    code, _, result = run_driver(job, tmp_path / "storage")
    assert code == 0, result
    rows = table(result).values()
    pruned = [r for r in rows if r["state"] == "pruned"]
    complete = [r for r in rows if r["state"] == "complete"]
    assert pruned, "no trial was pruned"
    assert all(r["epochs"] < 3 for r in pruned)
    assert result["epochs_saved_by_pruning"] == sum(3 - r["epochs"] for r in pruned)
    assert result["epochs_run"] == sum(r["epochs"] for r in rows)
    # What was pruned was worse than what completed.
    assert max(r["value"] for r in pruned) < max(r["value"] for r in complete)
    assert result["best"]["params"]["learningRate"] > 1e-3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_trial_reaches_the_study_through_the_study_server(tmp_path: Path,
                                                            write_manifest: Any) -> None:
    manifest = sweep_manifest()
    job, storage, port = write_manifest(manifest), tmp_path / "storage", _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "kubetrain.tuning.serve", "--storage", str(storage),
         "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        proxy = st.open_storage(storage, study_server=address, wait_seconds=60)
        st.create_study_once(proxy, "test-job", spec_of(manifest))
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
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, server.stderr and server.stderr.read()
    # The server wrote the journal in the job's storage: the study outlives it.
    stored = open_study(storage).trials
    assert [(t.number, t.state, t.value) for t in stored] == [
        (0, optuna.trial.TrialState.COMPLETE, result["value"])]
    assert stored[0].intermediate_values.keys() == {1, 2}


@pytest.mark.slow
def test_ray_backend_runs_the_same_sweep(tmp_path: Path, write_manifest: Any) -> None:
    job = write_manifest(sweep_manifest(epochs=3, trials=3, parallelism=2, backend="ray",
                                        pruner="median", searchSpace=WIDE_SPACE))
    code, events, result = run_driver(job, tmp_path / "storage", timeout=600)
    assert code == 0, result
    assert result["backend"] == "ray"
    counts = result["trials"]
    assert counts["total"] == 3 and counts["running"] == 0 and counts["failed"] == 0
    assert counts["complete"] + counts["pruned"] == 3 and counts["complete"] >= 1
    rows = table(result)
    best = max((r for r in rows.values() if r["state"] == "complete"), key=lambda r: r["value"])
    assert result["best"]["trial"] == best["number"]
    assert result["epochs_run"] == sum(r["epochs"] for r in rows.values())
    assert {e["number"] for e in trial_events(events)} == {0, 1, 2}
    # The trials trained in the same folders as with the optuna backend; complete ones
    # finished there (history and model written).
    for number, row in rows.items():
        folder = tmp_path / "storage" / "tuning" / f"trial-{number}"
        assert (folder / "checkpoints").is_dir()
        assert (folder / "model.pt").exists() == (row["state"] == "complete")
