"""Custom script mode (training.command): the user's program run as a unit, as a pod runs it.

The programs here are small stand-ins written by the tests: they print kubetrain's JSON lines
from a scripted list of losses, so each test decides what the program reports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kubetrain.api import load_training_job
from kubetrain.api.resource import ManifestError
from kubetrain.report import SPEC_PROBLEM_EXIT, parse_event
from kubetrain.workloads.trainer import OVERFITTING_STOP
from support import EXAMPLES, kubetrain

PROGRAM = '''
import json, os, pathlib, sys, time
losses = json.loads(sys.argv[1])
mode = sys.argv[2]
print("argv " + json.dumps(sys.argv[3:]))
print("env " + json.dumps({k: v for k, v in os.environ.items() if k.startswith("KUBETRAIN_")}))
ckdir = pathlib.Path(os.environ["KUBETRAIN_CHECKPOINT_DIR"])
ckdir.mkdir(parents=True, exist_ok=True)
mark = ckdir / "last-epoch"
start = int(mark.read_text()) + 1 if mark.exists() else 1
for epoch in range(start, len(losses) + 1):
    train, val = losses[epoch - 1]
    print(json.dumps({"kubetrain": 1, "event": "epoch", "epoch": epoch, "train_loss": train,
                      "val_loss": val}), flush=True)
    if os.environ.get("RANK", "0") == "0":  # rank 0 saves, as DDP programs do
        mark.write_text(str(epoch))
    if mode == "fail" and epoch == 2:
        print("Traceback (most recent call last):")
        print("RuntimeError: boom at epoch 2", flush=True)
        sys.exit(3)
    if mode == "slow":
        time.sleep(0.4)
print(json.dumps({"kubetrain": 1, "event": "test", "test_accuracy": 0.5}), flush=True)
'''
FALLING = [[1.0 / e, 1.05 / e] for e in range(1, 7)]
# Training loss falls, validation loss rises from epoch 3: overfitting.
OVERFIT = [[1.0 / e, 0.6 if e < 3 else 0.6 + 0.2 * (e - 2)] for e in range(1, 21)]


def _job(tmp_path: Path, losses: list[list[float]], mode: str = "", *extra: str,
         **spec: Any) -> Path:
    (tmp_path / "prog.py").write_text(PROGRAM)
    training = {"command": ["python", "prog.py", json.dumps(losses), mode, *extra],
                "epochs": len(losses), **spec.pop("training", {})}
    manifest = {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
                "metadata": {"name": "custom"},
                "spec": {"dataset": {"builtin": "iris", "seed": 0}, "training": training,
                         **spec}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def _start(job: Path, storage: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kubetrain.workloads.script", "--job", str(job), "--storage",
         str(storage), "--workdir", str(job.parent), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, list[str], list[dict[str, Any]]]:
    out, _ = proc.communicate(timeout=120)
    lines = out.splitlines()
    return proc.returncode, lines, [e for e in map(parse_event, lines) if e is not None]


def _result(storage: Path) -> dict[str, Any]:
    return json.loads((storage / "train" / "result.json").read_text())


def test_program_gets_its_data_parameters_and_places_and_gets_findings(tmp_path: Path) -> None:
    job = _job(tmp_path, FALLING, "", "--epochs", "${epochs}", "--hidden", "${params.hidden}",
               "--lr=${params.learningRate}", "${checkpointDir}",
               training={"params": {"hidden": 7}, "learningRate": 0.01})
    storage = tmp_path / "storage"
    code, lines, events = _finish(_start(job, storage))
    assert code == 0
    unit = storage / "train"
    argv = json.loads(next(line for line in lines if line.startswith("argv "))[5:])
    assert argv == ["--epochs", "6", "--hidden", "7", "--lr=0.01", str(unit / "checkpoints")]
    env = json.loads(next(line for line in lines if line.startswith("env "))[4:])
    assert json.loads(env["KUBETRAIN_PARAMS"])["hidden"] == 7
    assert env["KUBETRAIN_DATA_DIR"] == str(unit / "data")
    assert env["KUBETRAIN_EPOCHS"] == "6" and env["KUBETRAIN_MONITOR"] == "val_loss"
    # The job's splits as numpy files, the same rows the built-in trainer would use.
    train, test = np.load(unit / "data" / "train.npz"), np.load(unit / "data" / "test.npz")
    meta = json.loads((unit / "data" / "meta.json").read_text())
    assert train["X"].shape[1] == 4 and meta["task"] == "classification"
    assert len(train["y"]) + len(test["y"]) + meta["rows"]["val"] == 150
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3, 4, 5, 6]
    result = _result(storage)
    assert result["status"] == "succeeded" and result["epochs_run"] == 6
    assert result["best_epoch"] == 6 and result["test_metrics"] == {"test_accuracy": 0.5}
    assert result["overfitting"]["verdict"] == "none"
    history = json.loads((unit / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]


def test_a_failing_program_fails_the_unit_with_its_exit_code_and_last_lines(
        tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    code, _, _ = _finish(_start(_job(tmp_path, FALLING, "fail"), storage))
    assert code == 3
    result = _result(storage)
    assert result["status"] == "failed"
    assert "exited with code 3" in result["message"]
    assert "RuntimeError: boom at epoch 2" in result["message"]
    # What it reported before it died is kept in the job's storage.
    assert len(json.loads((storage / "train" / "history.json").read_text())) == 2


def test_overfitting_with_action_stop_stops_the_program_and_keeps_its_checkpoint(
        tmp_path: Path) -> None:
    job = _job(tmp_path, OVERFIT, "slow",
               findings={"overfitting": {"action": "stop", "patience": 3, "warmupEpochs": 1}})
    storage = tmp_path / "storage"
    code, _, events = _finish(_start(job, storage))
    assert code == 0
    result = _result(storage)
    assert result["stop_reason"] == OVERFITTING_STOP and result["status"] == "succeeded"
    stopped = next(e for e in events if e["event"] == "stopped")
    # Told to stop (SIGTERM) as soon as the verdict came: no epoch after the decision.
    assert result["epochs_run"] == stopped["epoch"] < len(OVERFIT)
    assert result["overfitting"]["verdict"] == "overfitting"
    assert (storage / "train" / "checkpoints" / "last-epoch").read_text() == str(
        stopped["epoch"])
    assert (storage / "train" / "STOP").exists()


def test_a_killed_program_resumes_from_its_checkpoint_and_the_history_continues(
        tmp_path: Path) -> None:
    job = _job(tmp_path, FALLING, "slow")
    storage = tmp_path / "storage"
    proc = _start(job, storage)
    assert proc.stdout is not None
    for line in proc.stdout:
        event = parse_event(line)
        if event and event["event"] == "epoch" and event["epoch"] >= 3:
            break
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and the program, as a lost node
    proc.wait()
    time.sleep(0.5)
    code, _, events = _finish(_start(job, storage))
    assert code == 0
    resumed = next(e for e in events if e["event"] == "resumed")
    result = _result(storage)
    assert result["resumed_from_epoch"] == resumed["epoch"] >= 3
    history = json.loads((storage / "train" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]


def test_sigterm_ends_the_program_and_the_unit_as_terminated(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    proc = _start(_job(tmp_path, FALLING, "slow"), storage)
    assert proc.stdout is not None
    for line in proc.stdout:
        if (parse_event(line) or {}).get("event") == "epoch":
            break
    proc.send_signal(signal.SIGTERM)
    code, _, _ = _finish(proc)
    assert code == 143
    assert _result(storage)["status"] == "terminated"


def test_a_placeholder_without_a_parameter_is_a_spec_problem(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    code, _, _ = _finish(_start(_job(tmp_path, FALLING, "", "${params.width}"), storage))
    assert code == SPEC_PROBLEM_EXIT
    problems = _result(storage)["problems"]
    assert problems[0].startswith("spec.training.command[4]: ${params.width} is not one of")


@pytest.mark.parametrize(("change", "expected"), [
    ({"model": {"builtin": "mlp"}}, "spec.model: remove it: with training.command"),
    ({"training": {"command": ["python", "x.py", "${epoch}"]}},
     "spec.training.command[2]: unknown placeholder ${epoch}"),
    ({"training": {"command": ["python", "x.py"]},
      "tuning": {"enabled": True, "backend": "ray",
                 "searchSpace": {"width": {"type": "int", "low": 1, "high": 4}}}},
     "spec.tuning.backend: ray is not available with training.command"),
    ({"training": {"command": ["python", "x.py"]},
      "tuning": {"enabled": True, "searchSpace": {"bad-name": {"type": "int", "low": 1,
                                                               "high": 4}}}},
     "spec.tuning.searchSpace.bad-name: must be a name"),
])
def test_bad_custom_specs_name_the_field(tmp_path: Path, change: dict[str, Any],
                                         expected: str) -> None:
    spec: dict[str, Any] = {"dataset": {"builtin": "iris"},
                            "training": {"command": ["python", "x.py"]}}
    spec.update(change)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
                                    "metadata": {"name": "bad"}, "spec": spec}))
    with pytest.raises(ManifestError) as error:
        load_training_job(path)
    assert any(p.startswith(expected) for p in error.value.problems), error.value.problems


def test_params_without_a_command_and_a_job_without_a_model_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    for spec, expected in (
            ({"dataset": {"builtin": "iris"}, "model": {"builtin": "mlp"},
              "training": {"params": {"x": 1}}}, "spec.training.params: applies to"),
            ({"dataset": {"builtin": "iris"}}, "spec.model: required")):
        path.write_text(yaml.safe_dump({"apiVersion": "kubetrain.io/v1alpha1",
                                        "kind": "TrainingJob", "metadata": {"name": "bad"},
                                        "spec": spec}))
        with pytest.raises(ManifestError) as error:
            load_training_job(path)
        assert any(p.startswith(expected) for p in error.value.problems), error.value.problems


@pytest.mark.slow
def test_a_sweep_over_a_program_prunes_within_one_epoch_of_the_decision(tmp_path: Path) -> None:
    # The program's losses depend on its parameter: quality 0 is bad, 1 is good.
    (tmp_path / "prog.py").write_text(PROGRAM.replace(
        "losses = json.loads(sys.argv[1])",
        "q = float(sys.argv[3]); losses = [[1.0 / e, (2 - q) / e] for e in range(1, 9)]"))
    manifest = {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
                "metadata": {"name": "sweep"},
                "spec": {"dataset": {"builtin": "iris"},
                         "training": {"command": ["python", "prog.py", "-", "slow",
                                                  "${params.quality}"], "epochs": 8},
                         "tuning": {"enabled": True, "sampler": "grid", "pruner": "median",
                                    "trials": 6, "parallelism": 1, "searchSpace": {
                                        "quality": {"type": "categorical",
                                                    "choices": [1.0, 0.9, 0.0, 0.1, 0.2, 0.3]}}}}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    out = tmp_path / "status.yaml"
    proc = kubetrain("run", str(path), "--storage", str(tmp_path / "run"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = yaml.safe_load(out.read_text())["status"]
    assert status["phase"] == "Succeeded"
    trials = status["tuning"]["trials"]
    assert trials["pruned"] >= 1 and trials["complete"] + trials["pruned"] == 6
    assert status["tuning"]["best"]["params"]["quality"] >= 0.9
    table = json.loads((tmp_path / "run" / "tuning" / "trials.json").read_text())
    for trial in table:
        if trial["state"] == "pruned":
            # The program was stopped in the epoch the pruner decided: nothing ran after it.
            history = json.loads((tmp_path / "run" / "tuning" / f"trial-{trial['number']}"
                                  / "history.json").read_text())
            assert len(history) == trial["epochs"] < 8


@pytest.mark.slow
def test_custom_script_example_sweeps_trains_explains_and_finds(tmp_path: Path) -> None:
    out = tmp_path / "status.yaml"
    proc = kubetrain("run", str(EXAMPLES / "custom-script" / "job.yaml"), "--storage",
                     str(tmp_path / "run"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = yaml.safe_load(out.read_text())["status"]
    assert status["phase"] == "Succeeded"
    trials = status["tuning"]["trials"]
    assert trials["total"] == 6 and trials["complete"] + trials["pruned"] == 6
    assert set(status["tuning"]["best"]["params"]) == {"learningRate", "hidden"}
    assert status["training"]["testMetrics"]["test_accuracy"] >= 0.9
    assert status["findings"]["overfitting"]["verdict"] in ("none", "suspected", "overfitting")
    explanation = status["findings"]["explanation"]
    assert explanation["topFeatures"][0]["feature"].startswith("c0_h")
    assert explanation["completenessError"] < 0.05
    cost = status["findings"]["cost"]
    assert cost["total"] > 0 and set(cost["byStage"]) >= {"tuning", "training", "explanation"}
    train = status["stages"]["training"]["units"]["train"]["result"]
    assert train["world_size"] == 2  # under torchrun: nprocPerNode 2
    assert Path(train["model"]).name == "model.ts"


# --- the program in its own container (an image without kubetrain) ---------------------------
# The pod's two containers are two processes here: the launcher (`sh -c LAUNCHER`, what the
# program container runs) and the runner with --program-dir; they share a folder, and here as
# in the pod (shareProcessNamespace) the runner can signal the program.


def _launcher(tmp_path: Path, folder: Path) -> subprocess.Popen[str]:
    from kubetrain.launcher import LAUNCHER

    folder.mkdir(exist_ok=True)
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # `python` is this one
    return subprocess.Popen(["sh", "-c", LAUNCHER, "sh"], cwd=tmp_path, text=True,
                            env={"PATH": path, "KUBETRAIN_PROGRAM_DIR": str(folder)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_program_in_its_own_container_reports_through_the_shared_folder(
        tmp_path: Path) -> None:
    folder, storage = tmp_path / "shared", tmp_path / "storage"
    launcher = _launcher(tmp_path, folder)
    code, lines, events = _finish(_start(_job(tmp_path, FALLING, "", "${params.hidden}",
                                              training={"params": {"hidden": 5}}),
                                         storage, "--program-dir", str(folder)))
    assert launcher.wait(timeout=30) == 0
    assert code == 0
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3, 4, 5, 6]
    assert any(line.startswith('argv ["5"]') for line in lines)  # its output, passed through
    result = _result(storage)
    assert result["status"] == "succeeded" and result["test_metrics"] == {"test_accuracy": 0.5}


def test_a_failing_program_in_its_own_container_fails_the_runner_not_the_launcher(
        tmp_path: Path) -> None:
    folder, storage = tmp_path / "shared", tmp_path / "storage"
    launcher = _launcher(tmp_path, folder)
    code, _, _ = _finish(_start(_job(tmp_path, FALLING, "fail"), storage,
                                "--program-dir", str(folder)))
    assert launcher.wait(timeout=30) == 0
    assert code == 3
    assert "RuntimeError: boom at epoch 2" in _result(storage)["message"]


def test_a_stop_reaches_the_program_in_its_own_container(tmp_path: Path) -> None:
    folder, storage = tmp_path / "shared", tmp_path / "storage"
    launcher = _launcher(tmp_path, folder)
    job = _job(tmp_path, OVERFIT, "slow",
               findings={"overfitting": {"action": "stop", "patience": 3, "warmupEpochs": 1}})
    code, _, events = _finish(_start(job, storage, "--program-dir", str(folder)))
    assert launcher.wait(timeout=30) == 0
    assert code == 0
    stopped = next(e for e in events if e["event"] == "stopped")
    assert _result(storage)["epochs_run"] == stopped["epoch"] < len(OVERFIT)


def test_a_runner_that_never_launches_lets_the_program_container_end(tmp_path: Path) -> None:
    folder, storage = tmp_path / "shared", tmp_path / "storage"
    launcher = _launcher(tmp_path, folder)
    code, _, _ = _finish(_start(_job(tmp_path, FALLING, "", "${params.width}"), storage,
                                "--program-dir", str(folder)))
    assert code == SPEC_PROBLEM_EXIT
    assert launcher.wait(timeout=10) == 0


def test_a_torch_export_model_of_a_program_is_explained_on_the_jobs_data(
        tmp_path: Path) -> None:
    (tmp_path / "export.py").write_text('''
import json, os, numpy as np, torch
from torch import nn
d = np.load(os.path.join(os.environ["KUBETRAIN_DATA_DIR"], "train.npz"))
X, y = torch.from_numpy(d["X"]), torch.from_numpy(d["y"]).long()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
opt = torch.optim.Adam(model.parameters(), lr=0.05)
for epoch in range(1, 4):
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(X), y)
        opt.zero_grad(); loss.backward(); opt.step()
    print(json.dumps({"kubetrain": 1, "event": "epoch", "epoch": epoch,
                      "train_loss": loss.item(), "val_loss": loss.item() * 1.01}), flush=True)
batch = torch.export.Dim("batch")
program = torch.export.export(model.eval(), (X[:2],), dynamic_shapes=({0: batch},))
torch.export.save(program, os.path.join(os.environ["KUBETRAIN_MODEL_DIR"], "model.pt2"))
''')
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "export"},
        "spec": {"dataset": {"builtin": "iris", "seed": 0},
                 "training": {"command": ["python", "export.py"], "epochs": 3},
                 "explanation": {"enabled": True, "samples": 10, "background": 20}}}))
    storage = tmp_path / "storage"
    code, _, _ = _finish(_start(job, storage))
    assert code == 0
    assert Path(_result(storage)["model"]).name == "model.pt2"
    proc = subprocess.run([sys.executable, "-m", "kubetrain.workloads.explain", "--job", str(job),
                           "--storage", str(storage)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((storage / "explain" / "result.json").read_text())
    names = {f["feature"] for f in result["top_features"]}
    assert names <= {"sepal length (cm)", "sepal width (cm)", "petal length (cm)",
                     "petal width (cm)"} and len(names) == 4
    assert result["completeness_error"] < 0.05


def test_a_failure_under_torchrun_names_the_rank_and_its_code_and_the_programs_lines() -> None:
    from kubetrain.workloads.script import _program_lines

    lines = ["loading data", "KeyError: label",
             "W1130 08:33:39.1 48 torch/distributed/elastic/multiprocessing/api.py:900] "
             "Sending process 49 closing signal SIGTERM",
             "=" * 60, "python FAILED", "-" * 60, "Failures:", "  <NO_OTHER_FAILURES>",
             "-" * 60, "Root Cause (first observed failure):", "[0]:",
             "  time      : 2026-11-30_08:33:39", "  host      : failing-train-0",
             "  rank      : 1 (local_rank: 1)", "  exitcode  : 5 (pid: 48)",
             "  error_file: <N/A>", "=" * 60]
    program, failed = _program_lines(lines)
    assert program == ["loading data", "KeyError: label"]
    assert failed == (5, 1)


def _program_of_rank(rank: int, marker: str) -> int | None:
    """The pid of the test program running as a torchrun rank (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        # The program itself (python prog.py ...), not its runner (python -m ...script).
        if len(cmdline) > 1 and cmdline[1].endswith(marker.encode()) and \
                f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_restarts_the_gang_and_the_program_resumes(tmp_path: Path) -> None:
    # Two processes (torchrun); the program of rank 1 is SIGKILLed mid-run: the gang fails,
    # the engine starts the unit again as a new attempt, and the program resumes from its
    # checkpoint (its history continues).
    losses = [[1.0 / e, 1.05 / e] for e in range(1, 16)]
    job = _job(tmp_path, losses, "slow", training={"resources": {"nprocPerNode": 2}},
               runPolicy={"backoffLimit": 2})
    out = tmp_path / "status.yaml"
    storage = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "kubetrain.cli", "run", str(job),
                             "--storage", str(storage), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    history = storage / "train" / "history.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if history.exists() and len(json.loads(history.read_text() or "[]")) >= 3:
            break
        time.sleep(0.2)
    victim = _program_of_rank(1, "prog.py")
    assert victim is not None, "no program of rank 1 running"
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=300) == 0
    status = yaml.safe_load(out.read_text())["status"]
    unit = status["stages"]["training"]["units"]["train"]
    assert status["phase"] == "Succeeded"
    assert unit["restarts"] == 1 and unit["attempt"] == 1
    assert unit["result"]["resumed_from_epoch"] >= 3
    assert [h["epoch"] for h in json.loads(history.read_text())] == list(range(1, 16))


def test_a_program_is_tracked_like_the_built_in_trainer(tmp_path: Path,
                                                       mlflow_server: Any) -> None:
    job = _job(tmp_path, FALLING, tracking={
        "tensorboard": True, "mlflow": {"uri": mlflow_server.uri(), "experiment": "program"}})
    storage = tmp_path / "storage"
    code, _, _ = _finish(_start(job, storage))
    assert code == 0 and "tracking_warnings" not in _result(storage)
    client = mlflow_server.client()
    experiment = client.get_experiment_by_name("program")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "custom/train" and run.info.status == "FINISHED"
    losses = sorted(client.get_metric_history(run.info.run_id, "val_loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in losses] == [(e, v) for e, (_, v) in
                                                   enumerate(FALLING, start=1)]
    assert run.data.metrics["test_accuracy"] == 0.5
    assert run.data.params["training.command"].startswith("['python', 'prog.py'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(storage / "tensorboard" / "train"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/val")] == [1, 2, 3, 4, 5, 6]
