"""The tuning stage as it runs: a real Optuna study, real trial units, tiny trainings.

The library (samplers, pruners, the study) is tested directly; the sweep goes through the
user's command, ``kubetrain run``, whose stage engine starts the study server, the trial units
(``python -m kubetrain.workloads.trial``) and the summary (``kubetrain.workloads.tune
--summarize``); the summary and the Ray sweep are also run as units of their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from kubetrain.api.spec import TrainingJobSpec
from kubetrain.pipeline.params import apply_params
from kubetrain.pipeline.plan import target_trials, trial_seed
from kubetrain.report import MAX_RESULT_BYTES, parse_event
from kubetrain.tuning import space as sp
from kubetrain.tuning import study as st
from kubetrain.workloads import trial as trial_unit
from kubetrain.workloads import tune as tune_unit
from pydantic import ValidationError
from support import base_manifest, ctrl_c_reaches_it

SPACE = {"learningRate": {"type": "float", "low": 1e-4, "high": 0.05, "log": True}}
# Clearly bad values at the low end: 1e-6 barely moves the weights in a few epochs.
WIDE_SPACE = {"learningRate": {"type": "float", "low": 1e-6, "high": 0.1, "log": True}}
TRIAL_MODULE = "kubetrain.workloads.trial"
FINISHED = ("Succeeded", "Failed")


def sweep_manifest(epochs: int = 2, batch_size: int = 64, **tuning: Any) -> dict[str, Any]:
    settings = {"enabled": True, "sampler": "tpe", "pruner": "none", "trials": 3,
                "parallelism": 1, "searchSpace": SPACE,
                "objective": {"metric": "val_accuracy", "direction": "maximize"}, **tuning}
    return base_manifest(
        model={"builtin": "mlp", "params": {"hiddenUnits": [32]}},
        training={"epochs": epochs, "batchSize": batch_size, "learningRate": 0.003},
        tuning=settings,
    )


def spec_of(manifest: dict[str, Any]) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(manifest["spec"])


def open_study(storage: Path, name: str = "test-job") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=st.open_storage(storage))


def trials_table(storage: Path) -> dict[int, dict[str, Any]]:
    """The sweep's trials table (``<storage>/tuning/trials.json``) by trial number."""
    rows = json.loads((storage / "tuning" / "trials.json").read_text())
    return {row["number"]: row for row in rows}


# ----- `kubetrain run`, watched -------------------------------------------------------------


def trial_pids(storage: Path) -> set[int]:
    """The live trial processes of the job in ``storage`` (their command line names it)."""
    marker = str(storage.resolve())
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace")
                    for a in (entry / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if TRIAL_MODULE in argv and any(marker in a for a in argv):
            found.add(int(entry.name))
    return found


Watch = Callable[[set[int], "subprocess.Popen[str]"], None]


def run_job(job: Path, storage: Path, *extra: str, watch: Watch | None = None,
            timeout: float = 400) -> tuple[int, dict[str, Any], str]:
    """``kubetrain run FILE --storage DIR`` as a user runs it: exit code, the status it printed
    (empty when it printed none) and its stderr. ``watch`` sees the live trial processes."""
    out, err = storage.parent / "run-stdout.txt", storage.parent / "run-stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubetrain.cli", "run", str(job), "--storage", str(storage),
             "--no-progress", *extra], stdout=stdout, stderr=stderr, text=True,
            preexec_fn=ctrl_c_reaches_it)
        deadline = time.time() + timeout
        try:
            while proc.poll() is None:
                assert time.time() < deadline, "the job took too long"
                if watch is not None:
                    watch(trial_pids(storage), proc)
                time.sleep(0.03)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # the executor stops its units
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    manifest = yaml.safe_load(out.read_text()) or {}
    return proc.returncode, manifest.get("status") or {}, err.read_text()


def trial_units(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The trial units of the tuning stage (``trial-N``), as status records them."""
    units = status["stages"]["tuning"]["units"]
    return {name: unit for name, unit in units.items() if name.startswith("trial-")}


def counted(units: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Trial units that count towards the sweep's target: finished and not replaced."""
    return {n: u for n, u in units.items() if u["phase"] in FINISHED and not u.get("replaced")}


# ----- a tuning unit on its own ---------------------------------------------------------------


def run_unit(job: Path, storage: Path, *extra: str, timeout: float = 400,
             ) -> tuple[int, list[dict[str, Any]], dict[str, Any], str]:
    """``python -m kubetrain.workloads.tune`` as an executor starts it: exit code, events,
    result file and stderr."""
    result_file = storage.parent / "tune-result.json"
    result_file.unlink(missing_ok=True)
    storage.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "kubetrain.workloads.tune", "--job", str(job),
         "--storage", str(storage), "--result", str(result_file), *extra],
        capture_output=True, text=True, timeout=timeout)
    events = [e for e in map(parse_event, proc.stdout.splitlines()) if e]
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    if result:
        assert len(result_file.read_bytes()) <= MAX_RESULT_BYTES
    return proc.returncode, events, result, proc.stderr


def trial_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "trial"]


# ----- the library ------------------------------------------------------------------------


SAMPLERS = {"grid": optuna.samplers.GridSampler, "random": optuna.samplers.RandomSampler,
            "tpe": optuna.samplers.TPESampler, "cmaes": optuna.samplers.CmaEsSampler,
            "gp": optuna.samplers.GPSampler, "nsga2": optuna.samplers.NSGAIISampler}
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


# ----- every sampler and pruner drives a real sweep ------------------------------------------
#
# The trial units' and the summary unit's own main(), in this process one after another (a
# process start costs more than these trainings): a real study in the journal file, the
# sampler and pruner of the spec, real trainings on small data, the summary's result.

TWO_DIMENSIONS = {"learningRate": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
                  "dropout": {"type": "float", "low": 0.0, "high": 0.5}}
GRID = {"learningRate": {"type": "float", "low": 0.01, "high": 0.03, "step": 0.02},
        "dropout": {"type": "float", "low": 0.0, "high": 0.4, "step": 0.2}}


def small_sweep(dataset: str, epochs: int, **tuning: Any) -> dict[str, Any]:
    manifest = sweep_manifest(epochs=epochs, batch_size=32, **tuning)
    manifest["spec"]["dataset"] = {"builtin": dataset, "seed": 0}
    return manifest


def sweep_in_process(job: Path, storage: Path) -> dict[str, Any]:
    """Create the study (as the study server does), run each trial unit's main() in turn (each
    with the sampler seed the plan gives it), then the summary unit: its result."""
    spec = spec_of(yaml.safe_load(job.read_text()))
    st.create_study_once(st.open_storage(storage), "test-job", spec)
    handler = signal.getsignal(signal.SIGTERM)  # a trial unit sets its own
    try:
        for index in range(target_trials(spec)):
            code = trial_unit.main(["--job", str(job), "--storage", str(storage),
                                    "--study", "test-job", "--sampler-seed",
                                    str(trial_seed(spec.dataset.seed, index)),
                                    "--result", str(storage / f"trial-{index}.json")])
            assert code == 0, f"trial {index} exited with {code}"
    finally:
        signal.signal(signal.SIGTERM, handler)
    result = storage / "summary.json"
    assert tune_unit.main(["--job", str(job), "--storage", str(storage), "--summarize",
                           "--result", str(result)]) == 0
    summary: dict[str, Any] = json.loads(result.read_text())
    return summary


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_drives_a_sweep_to_its_best_trial(tmp_path: Path, write_manifest: Any,
                                                        sampler: str) -> None:
    manifest = small_sweep("iris", 3, sampler=sampler, trials=6,
                           searchSpace=GRID if sampler == "grid" else TWO_DIMENSIONS)
    storage = tmp_path / "storage"
    summary = sweep_in_process(write_manifest(manifest), storage)
    assert summary["trials"] == {"total": 6, "running": 0, "complete": 6, "pruned": 0,
                                 "failed": 0}
    rows = trials_table(storage)
    assert len({json.dumps(r["params"], sort_keys=True) for r in rows.values()}) == 6, \
        "the sampler drew the same point twice"
    best = max(rows.values(), key=lambda r: (r["value"], -r["number"]))
    assert summary["best"]["trial"] == best["number"] and summary["best"]["value"] > 0.5
    assert all(r["cost"] > 0 and r["train_seconds"] > 0 for r in rows.values())
    trials = open_study(storage).trials
    if sampler == "cmaes":  # CMA-ES itself sampled (not its random fallback) after trial 0
        assert any(k.startswith("cma:") for t in trials[1:] for k in t.system_attrs)
    if sampler == "nsga2":  # a population of 4: trials 4 and 5 are the second generation
        assert [t.system_attrs["NSGAIISampler:generation"] for t in trials] == [0] * 4 + [1] * 2
    if sampler == "grid":
        assert {(r["params"]["learningRate"], r["params"]["dropout"])
                for r in rows.values()} == {(lr, d) for lr in (0.01, 0.03)
                                            for d in (0.0, 0.2, 0.4)}


@pytest.mark.parametrize("pruner", ["median", "hyperband", "successive-halving"])
def test_every_pruner_stops_bad_trials_in_a_sweep(tmp_path: Path, write_manifest: Any,
                                                  pruner: str) -> None:
    manifest = small_sweep("breast_cancer", 4, sampler="random", pruner=pruner, trials=8,
                           searchSpace=WIDE_SPACE)
    storage = tmp_path / "storage"
    summary = sweep_in_process(write_manifest(manifest), storage)
    rows = list(trials_table(storage).values())
    pruned = [r for r in rows if r["state"] == "pruned"]
    complete = [r for r in rows if r["state"] == "complete"]
    assert pruned, f"{pruner} pruned no trial"
    assert len(pruned) + len(complete) == 8
    assert all(r["epochs"] < 4 for r in pruned) and all(r["epochs"] == 4 for r in complete)
    assert summary["epochs_saved_by_pruning"] == sum(4 - r["epochs"] for r in pruned)
    assert summary["epochs_run"] == sum(r["epochs"] for r in rows)
    # A pruned trial's cost is that of the epochs it ran.
    assert all(r["cost"] > 0 for r in pruned)
    assert summary["best"]["value"] == max(r["value"] for r in complete)


@pytest.mark.parametrize("sampler", ["nsga2", "tpe", "gp", "random"])
def test_a_cost_aware_sweep_reports_its_pareto_front_and_selection(
        tmp_path: Path, write_manifest: Any, sampler: str) -> None:
    space = {**TWO_DIMENSIONS, "model.hiddenUnits": {"type": "categorical",
                                                     "choices": [[8], [256, 256]]}}
    manifest = small_sweep("iris", 3, sampler=sampler, pruner="none", trials=6,
                           objectives=[{"name": "val_accuracy"}, {"name": "cost"},
                                       {"name": "trainSeconds"}],
                           selection={"cheapestWithin": 0.05}, searchSpace=space)
    del manifest["spec"]["tuning"]["objective"]
    storage = tmp_path / "storage"
    summary = sweep_in_process(write_manifest(manifest), storage)
    assert summary["objectives"] == ["val_accuracy", "cost", "trainSeconds"]
    assert summary["trials"]["complete"] == 6
    study = open_study(storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    # The front is Optuna's own, with each trial's parameters and objectives.
    front = summary["pareto_front"]
    assert sorted(p["trial"] for p in front) == sorted(t.number for t in study.best_trials)
    rows = trials_table(storage)
    for entry in front:
        row = rows[entry["trial"]]
        assert entry["params"] == row["params"]
        assert entry["values"] == pytest.approx(row["values"], rel=1e-5)
        assert entry["values"]["cost"] == pytest.approx(row["cost"], rel=1e-5)
    # The selection: the cheapest trial within 0.05 of the best accuracy, which trains.
    accuracy = {n: r["values"]["val_accuracy"] for n, r in rows.items()}
    top = max(accuracy.values())
    cheapest = min((n for n in rows if accuracy[n] >= top - 0.05 - 1e-12),
                   key=lambda n: rows[n]["cost"])
    selection = summary["selection"]
    assert selection["trial"] == cheapest == summary["best"]["trial"]
    assert summary["best"]["params"] == rows[cheapest]["params"]
    assert selection["best_metric_value"] == pytest.approx(top)
    assert selection["saved"] == pytest.approx(
        selection["best_metric_cost"] - selection["cost"], rel=1e-4)
    assert selection["saved"] >= 0 and selection["metric_lost"] <= 0.05 + 1e-9


# ----- the sweep through `kubetrain run` ----------------------------------------------------


def test_sweep_runs_parallel_trials_to_the_budget_and_names_the_best(
        tmp_path: Path, write_manifest: Any) -> None:
    job, storage = write_manifest(sweep_manifest(trials=4, parallelism=2)), tmp_path / "storage"
    at_once: list[int] = []
    code, status, stderr = run_job(job, storage,
                                   watch=lambda pids, _: at_once.append(len(pids)))
    assert code == 0, stderr[-3000:]
    assert status["phase"] == "Succeeded"
    tuning = status["tuning"]
    assert tuning["trials"] == {"total": 4, "running": 0, "complete": 4, "pruned": 0,
                                "failed": 0}
    assert max(at_once) == 2, "the trials did not run two at a time"
    rows = trials_table(storage)
    assert sorted(rows) == [0, 1, 2, 3]
    best = max(rows.values(), key=lambda r: r["value"])
    assert tuning["best"] == {"trial": best["number"], "params": best["params"],
                              "value": best["value"]}
    assert tuning["best"]["value"] > 0.5
    assert tuning["epochsRun"] == 8 and tuning["epochsSavedByPruning"] == 0
    assert len({json.dumps(r["params"]) for r in rows.values()}) == 4, "trials drew alike"
    # One unit per trial, each with its trial's result and its cost.
    units = trial_units(status)
    assert sorted(units) == ["trial-0", "trial-1", "trial-2", "trial-3"]
    assert sorted(u["result"]["trial"] for u in units.values()) == [0, 1, 2, 3]
    for unit in units.values():
        assert unit["phase"] == "Succeeded" and not unit.get("replaced")
        assert unit["cost"] > 0
        result, row = unit["result"], rows[unit["result"]["trial"]]
        assert result["state"] == "complete" and result["epochs_run"] == 2
        assert (result["value"], result["params"]) == (row["value"], row["params"])
        assert result["seconds"] > 0
    # Each trial trained in its own folder, and its model is there.
    assert all((storage / "tuning" / f"trial-{n}" / "model.pt").exists() for n in rows)


def test_a_killed_trial_is_failed_and_the_sweep_goes_on(tmp_path: Path,
                                                        write_manifest: Any) -> None:
    # Five epochs in batches of 16: time to kill a trial in the middle of its training.
    job = write_manifest(sweep_manifest(epochs=5, batch_size=16, trials=3, parallelism=1))
    storage = tmp_path / "storage"
    killed: list[int] = []

    def kill_one_in_training(pids: set[int], _: Any) -> None:
        if killed or len(pids) != 1:
            return
        # One trial at a time: a folder with a checkpoint and no history yet (written at the
        # end) is the running trial's, which owns a study trial and has trained an epoch.
        for folder in sorted((storage / "tuning").glob("trial-*")):
            training = (folder / "checkpoints" / "latest.pt").exists() and \
                not (folder / "history.json").exists()
            if training and pids == trial_pids(storage):
                # SIGKILL: no chance to tell the study, as when a node dies or the OOM
                # killer hits.
                os.kill(next(iter(pids)), signal.SIGKILL)
                killed.append(int(folder.name.removeprefix("trial-")))
                return

    code, status, stderr = run_job(job, storage, watch=kill_one_in_training)
    assert code == 0, stderr[-3000:]
    assert killed, "no trial was caught in the middle of its training"
    assert status["phase"] == "Succeeded"
    rows = trials_table(storage)
    assert rows[killed[0]]["state"] == "failed"
    units = trial_units(status)
    cut = [u for u in units.values() if u["phase"] == "Failed"]
    assert len(cut) == 1 and cut[0]["message"], units
    assert len(counted(units)) == 3, "the sweep did not reach its three trials"
    trials = status["tuning"]["trials"]
    assert trials["running"] == 0 and trials["failed"] == 1
    # Counted as a failed trial, or replaced by a new one: three trials finished either way.
    assert trials["complete"] == (3 if cut[0].get("replaced") else 2)
    assert trials["total"] == trials["complete"] + trials["failed"] == len(rows)
    assert status["tuning"]["best"]["trial"] != killed[0]


def test_a_resumed_run_continues_the_stored_study(tmp_path: Path,
                                                   write_manifest: Any) -> None:
    manifest = sweep_manifest(trials=3, parallelism=1)
    job, storage, spec = write_manifest(manifest), tmp_path / "storage", spec_of(manifest)
    started: list[int] = []

    def ctrl_c_in_the_second_trial(pids: set[int], proc: subprocess.Popen[str]) -> None:
        started.extend(sorted(pids - set(started)))
        if len(started) == 2:  # one trial at a time: the first has ended
            proc.send_signal(signal.SIGINT)
            started.append(-1)  # once

    code, _, stderr = run_job(job, storage, watch=ctrl_c_in_the_second_trial)
    assert code == 130, stderr[-3000:]
    study = open_study(storage)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    before = {t.number: st.trial_row(t, spec.tuning.search_space)
              for t in study.trials if t.state in done}
    assert [row["state"] for row in before.values()] == ["complete"]
    # A run killed outright (kill -9) leaves a trial RUNNING that nobody runs.
    orphan = study.ask(sp.distributions(spec.tuning.search_space))

    code, status, stderr = run_job(job, storage, "--resume")
    assert code == 0, stderr[-3000:]
    assert status["phase"] == "Succeeded"
    after = trials_table(storage)
    assert {n: after[n] for n in before} == before, "earlier trials must stay as they were"
    assert after[orphan.number]["state"] == "failed"
    trials = status["tuning"]["trials"]
    # Only the missing trials ran: three complete, the one of the first run included.
    assert trials["complete"] == 3, trials
    assert trials["running"] == 0 and trials["pruned"] == 0
    assert trials["total"] == len(after) == trials["complete"] + trials["failed"]
    assert "running" not in {row["state"] for row in after.values()}


def test_median_pruning_stops_bad_trials_across_processes(tmp_path: Path,
                                                          write_manifest: Any) -> None:
    manifest = sweep_manifest(epochs=3, trials=6, parallelism=2, sampler="random",
                              pruner="median", searchSpace=WIDE_SPACE)
    # A high price, so that what pruning saved shows in the cost's six decimals.
    manifest["spec"]["findings"] = {"cost": {"prices": {"cpuHour": 100}}}
    storage = tmp_path / "storage"
    code, status, stderr = run_job(write_manifest(manifest), storage)
    assert code == 0, stderr[-3000:]
    rows = list(trials_table(storage).values())
    pruned = [r for r in rows if r["state"] == "pruned"]
    complete = [r for r in rows if r["state"] == "complete"]
    assert pruned, "no trial was pruned"
    assert all(r["epochs"] < 3 for r in pruned)
    tuning = status["tuning"]
    assert tuning["trials"] == {"total": 6, "running": 0, "complete": len(complete),
                                "pruned": len(pruned), "failed": 6 - len(complete) - len(pruned)}
    assert tuning["epochsSavedByPruning"] == sum(3 - r["epochs"] for r in pruned)
    assert tuning["epochsRun"] == sum(r["epochs"] for r in rows)
    assert status["findings"]["cost"]["savedByPruning"] > 0
    # What was pruned was worse than what completed.
    assert max(r["value"] for r in pruned) < max(r["value"] for r in complete)
    assert tuning["best"]["params"]["learningRate"] > 1e-3
    # A pruned trial's unit did what was asked of it: it succeeded, its result says pruned.
    units = trial_units(status)
    assert all(u["phase"] == "Succeeded" for u in units.values())
    assert sorted(u["result"]["state"] for u in units.values()) == sorted(
        r["state"] for r in rows)


# ----- the summary and the study server, as units of their own ----------------------------


def test_the_summary_fails_orphaned_trials_and_reports_the_sweep(
        tmp_path: Path, write_manifest: Any) -> None:
    manifest = sweep_manifest(trials=4)
    job, storage, spec = write_manifest(manifest), tmp_path / "storage", spec_of(manifest)
    study = st.create_study_once(st.open_storage(storage), "test-job", spec)
    dists = sp.distributions(spec.tuning.search_space)
    for value in (0.6, 0.8):
        trial = study.ask(dists)
        trial.report(value / 2, 1)
        trial.report(value, 2)
        trial.set_user_attr("epochs_run", 2)
        study.tell(trial, value)
    pruned = study.ask(dists)
    pruned.report(0.1, 1)
    pruned.set_user_attr("epochs_run", 1)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    # Its trial unit was killed after one epoch, before it could tell the study.
    orphan = study.ask(dists)
    orphan.report(0.5, 1)

    code, _, result, stderr = run_unit(job, storage, "--summarize")
    assert code == 0, stderr[-3000:]
    assert result["unit"] == "tune-summary" and result["status"] == "succeeded"
    assert result["orphaned_failed"] == [orphan.number]
    assert result["trials"] == {"total": 4, "running": 0, "complete": 2, "pruned": 1,
                                "failed": 1}
    assert result["best"] == {"trial": 1, "params": study.trials[1].params, "value": 0.8}
    assert result["epochs_run"] == 6  # 2 + 2 + 1, and the orphan's one reported epoch
    assert result["epochs_saved_by_pruning"] == 1  # 2 epochs planned, pruned after 1
    assert result["trials_table"] == str(storage / "tuning" / "trials.json")
    rows = trials_table(storage)
    assert [rows[n]["state"] for n in sorted(rows)] == ["complete", "complete", "pruned",
                                                         "failed"]
    assert open_study(storage).trials[orphan.number].state == optuna.trial.TrialState.FAIL


def test_a_summary_without_a_complete_trial_fails_the_stage(tmp_path: Path,
                                                            write_manifest: Any) -> None:
    manifest = sweep_manifest()
    job, storage, spec = write_manifest(manifest), tmp_path / "storage", spec_of(manifest)
    study = st.create_study_once(st.open_storage(storage), "test-job", spec)
    study.tell(study.ask(sp.distributions(spec.tuning.search_space)),
               state=optuna.trial.TrialState.FAIL)
    code, _, result, _ = run_unit(job, storage, "--summarize")
    assert code == 1
    assert result["status"] == "failed" and "no trial completed" in result["message"]
    assert result["trials"]["failed"] == 1


def test_the_optuna_backend_runs_no_sweep_inside_the_tune_unit(tmp_path: Path,
                                                               write_manifest: Any) -> None:
    code, _, result, stderr = run_unit(write_manifest(sweep_manifest()), tmp_path / "storage")
    assert code == 2 and result == {}
    assert "--summarize" in stderr and "kubetrain.workloads.trial" in stderr


@pytest.mark.slow
def test_ray_backend_runs_the_same_sweep(tmp_path: Path, write_manifest: Any) -> None:
    job = write_manifest(sweep_manifest(epochs=3, trials=3, parallelism=2, backend="ray",
                                        pruner="median", searchSpace=WIDE_SPACE))
    storage = tmp_path / "storage"
    code, events, result, stderr = run_unit(job, storage, timeout=600)
    assert code == 0, stderr[-3000:]
    assert result["unit"] == "tune" and result["backend"] == "ray"
    counts = result["trials"]
    assert counts["total"] == 3 and counts["running"] == 0 and counts["failed"] == 0
    assert counts["complete"] + counts["pruned"] == 3 and counts["complete"] >= 1
    rows = trials_table(storage)
    best = max((r for r in rows.values() if r["state"] == "complete"), key=lambda r: r["value"])
    assert result["best"]["trial"] == best["number"]
    assert result["epochs_run"] == sum(r["epochs"] for r in rows.values())
    assert {e["number"] for e in trial_events(events)} == {0, 1, 2}
    last = trial_events(events)[-1]
    assert last["counts"]["total"] == 3 and last["best"] == result["best"]
    # The trials trained in the same folders as with the optuna backend; complete ones
    # finished there (history and model written).
    for number, row in rows.items():
        folder = storage / "tuning" / f"trial-{number}"
        assert (folder / "checkpoints").is_dir()
        assert (folder / "model.pt").exists() == (row["state"] == "complete")


@pytest.mark.slow
def test_ray_backend_stops_a_grid_at_its_size(tmp_path: Path, write_manifest: Any) -> None:
    space = {"learningRate": {"type": "float", "low": 0.01, "high": 0.02, "step": 0.01}}
    job = write_manifest(sweep_manifest(trials=5, parallelism=2, backend="ray", sampler="grid",
                                        searchSpace=space))
    code, _, result, stderr = run_unit(job, tmp_path / "storage", timeout=600)
    assert code == 0, stderr[-3000:]
    assert result["trials"]["total"] == 2  # the grid's two points, not the five asked for
