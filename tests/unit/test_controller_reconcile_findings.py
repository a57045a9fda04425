"""The reconcile decision's findings: cost, budget, overfitting, progress, and the tuning
stage (trial pods, the best parameters reaching the final training)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from kubetrain.api.resource import TrainingJob
from kubetrain.api.status import StageStatus, TrainingJobStatus, UnitStatus
from kubetrain.controller.observe import Observed, PodView
from kubetrain.pipeline import status as st
from reconcile_cases import (
    GANG,
    NOW,
    TRAIN_RESULT,
    condition,
    make_job,
    names,
    pod,
    reasons,
    started_gang,
    step,
    succeeded_gang,
)

# ----- findings: cost, budget, overfitting, progress -------------------------------------------


PRICES = {"cpuHour": 0.1, "memoryGiBHour": 0.01, "gpuHour": 2.0, "currency": "EUR"}


def test_cost_is_pod_seconds_times_requests() -> None:
    job = make_job(training={"resources": {"nodes": 2, "gpusPerNode": 1, "cpu": "2",
                                           "memory": "4Gi"}},
                   findings={"cost": {"prices": PRICES}})
    observed = started_gang(job)
    observed.pods = succeeded_gang(TRAIN_RESULT, seconds=1800)
    decision = step(job, observed)
    cost = decision.status.findings.cost
    assert cost is not None
    # Two pods x 0.5 h = 1 pod-hour of (2 CPU, 4 GiB, 1 GPU).
    assert cost.cpu_hours == 2.0
    assert cost.gpu_hours == 1.0
    assert cost.memory_gi_b_hours == 4.0
    assert cost.total == pytest.approx(2 * 0.1 + 4 * 0.01 + 1 * 2.0)
    assert cost.currency == "EUR"
    assert decision.status.stages["training"].cost == pytest.approx(2.24)


def test_cost_after_best_epoch_comes_from_the_training_result() -> None:
    job = make_job(training={"resources": {"nodes": 1, "cpu": "1", "memory": "1Gi"}},
                   findings={"cost": {"prices": PRICES}})
    step(job, Observed())
    result = {**TRAIN_RESULT, "seconds_after_best": 3600.0}
    observed = Observed(pods=[pod("mnist-train-0", "Succeeded", started=NOW - timedelta(hours=2),
                                  finished=NOW, message=json.dumps(result))])
    decision = step(job, observed)
    cost = decision.status.findings.cost
    assert cost is not None
    assert cost.total == pytest.approx(2 * (0.1 + 0.01))
    assert cost.after_best_epoch == pytest.approx(0.11)


def budget_job(action: str = "stop") -> TrainingJob:
    job = make_job(augmentation={"enabled": True},
                   findings={"cost": {"prices": PRICES,
                                      "budget": {"maxCost": 0.01, "action": action}}})
    # Augmentation already ran one pod-hour of 2 CPU + 4 GiB: 0.2 + 0.04 = 0.24 > 0.01.
    status = TrainingJobStatus(phase="Running", start_time="2025-03-01T11:00:00Z")
    status.stages["augmentation"] = StageStatus(
        phase="Succeeded", units={
            "augment-0": UnitStatus(phase="Succeeded", seconds=1800.0),
            "augment-merge": UnitStatus(phase="Succeeded", seconds=1800.0)})
    status.stages["training"] = StageStatus()
    job.status = status
    return job


def test_budget_reached_stops_before_launching_more_work() -> None:
    job = budget_job()
    decision = step(job, Observed(config_maps={"mnist-job"}))
    status = decision.status
    cost = status.findings.cost
    assert cost is not None and cost.total == pytest.approx(0.24)
    assert cost.budget is not None and cost.budget.exceeded is True
    assert condition(status, "BudgetExceeded").status == "True"
    assert status.phase == "Failed"
    assert condition(status, "Failed").reason == "BudgetExceeded"
    assert decision.create == []
    assert "BudgetExceeded" in reasons(decision)


def test_budget_warn_only_sets_the_condition() -> None:
    job = budget_job("warn")
    decision = step(job, Observed(config_maps={"mnist-job"}))
    assert condition(decision.status, "BudgetExceeded").status == "True"
    assert decision.status.phase == "Running"
    assert sorted(names(decision, "Pod")) == GANG


def test_overfitting_finding_comes_from_the_train_unit_result() -> None:
    job = make_job()
    observed = started_gang(job)
    finding = {"verdict": "overfitting", "gap": 0.42, "bestEpoch": 6, "epochsAfterBest": 8,
               "rules": ["gap", "trend"],
               "evidence": ["val_loss rose for 4 epochs", "gap 42% > 10%"],
               "recommendations": ["add dropout"]}
    observed.pods = succeeded_gang({**TRAIN_RESULT, "overfitting": finding})
    decision = step(job, observed)
    overfitting = decision.status.findings.overfitting
    assert overfitting is not None
    assert overfitting.verdict == "overfitting"
    assert overfitting.gap == 0.42
    assert overfitting.best_epoch == 6
    assert overfitting.rules == ["gap", "trend"]
    detected = condition(decision.status, "OverfittingDetected")
    assert detected.status == "True"
    assert detected.reason == "OverfittingDetected"
    assert detected.message == "val_loss rose for 4 epochs; gap 42% > 10%"


def test_no_overfitting_finding_without_one_in_the_result() -> None:
    job = make_job()
    observed = started_gang(job)
    observed.pods = succeeded_gang(TRAIN_RESULT)
    decision = step(job, observed)
    assert decision.status.findings.overfitting is None
    assert all(c.type != "OverfittingDetected" for c in decision.status.conditions)


def test_live_progress_from_the_latest_epoch_event() -> None:
    job = make_job()
    observed = started_gang(job)
    observed.progress["train"] = {"event": "epoch", "epoch": 7, "epochs": 20,
                                  "train_loss": 0.3, "val_loss": 0.35, "val_accuracy": 0.9,
                                  "best_epoch": 6}
    decision = step(job, observed)
    training = decision.status.training
    assert training is not None
    assert training.epoch == 7
    assert training.epochs == 20
    assert training.best_epoch == 6
    assert training.metrics == {"train_loss": 0.3, "val_loss": 0.35, "val_accuracy": 0.9}
    assert decision.status.progress == "7/20 epochs"


def test_progress_ignores_events_that_are_not_epochs() -> None:
    job = make_job()
    observed = started_gang(job)
    observed.progress["train"] = {"event": "trial", "trial": 3}
    decision = step(job, observed)
    assert decision.status.training is None
    assert decision.status.progress is None


def test_tuned_params_reach_the_final_training() -> None:
    job = make_job(tuning={"enabled": True, "searchSpace": {
        "learningRate": {"type": "float", "low": 0.0001, "high": 0.1, "log": True}}})
    step(job, Observed())
    assert job.status is not None
    # The tune unit succeeded and reported its best trial.
    st.apply_tuning_result(job.status, job.spec, {
        "best": {"trial": 4, "params": {"learningRate": 0.02}, "value": 0.1}})
    job.status.stages["tuning"].phase = "Succeeded"
    decision = step(job, Observed(config_maps={"mnist-job"}))
    pods = [o for o in decision.create if o["kind"] == "Pod"]
    assert [p["metadata"]["name"] for p in pods] == GANG
    command = pods[0]["spec"]["containers"][0]["command"]
    assert command[command.index("--params") + 1] == '{"learningRate": 0.02}'


def _trial(index: int, phase: str, state: str | None = None) -> PodView:
    message = json.dumps({"trial": index, "state": state, "value": 0.1 * (index + 1),
                          "epochs_run": 3}) if state else None
    return PodView(name=f"mnist-trial-{index}", unit=f"trial-{index}", stage="tuning", rank=0,
                   role="trial", phase=phase, message=message,
                   exit_code=0 if phase == "Succeeded" else (1 if phase == "Failed" else None),
                   started=NOW - timedelta(seconds=30),
                   finished=NOW if phase in ("Succeeded", "Failed") else None)


def test_tuning_runs_a_study_server_trial_pods_and_a_summary() -> None:
    job = make_job(tuning={"enabled": True, "trials": 3, "parallelism": 2, "searchSpace": {
        "learningRate": {"type": "float", "low": 0.0001, "high": 0.1, "log": True}}})
    decision = step(job, Observed())
    created = {(o["kind"], o["metadata"]["name"]) for o in decision.create}
    # The server (which creates the study once) and its Service, then `parallelism` trials.
    assert {("Pod", "mnist-study"), ("Service", "mnist-study"), ("Pod", "mnist-trial-0"),
            ("Pod", "mnist-trial-1")} <= created
    assert ("Pod", "mnist-trial-2") not in created
    trial = next(o for o in decision.create if o["metadata"]["name"] == "mnist-trial-1")
    command = trial["spec"]["containers"][0]["command"]
    assert command[command.index("--study-server") + 1] == "mnist-study:13000"
    assert command[command.index("--sampler-seed") + 1] == "1"
    server = next(o for o in decision.create if o["metadata"]["name"] == "mnist-study")
    assert server["spec"]["restartPolicy"] == "Always"
    base = Observed(config_maps={"mnist-job"}, services={"mnist-study"},
                    pods=[pod("mnist-study", unit="study", stage="tuning", rank=0)])
    # Trial 0 completes, trial 1's pod dies: one more trial starts, the sweep goes on.
    observed = Observed(config_maps=base.config_maps, services=base.services,
                        pods=[*base.pods, _trial(0, "Succeeded", "complete"),
                              _trial(1, "Failed")])
    decision = step(job, observed)
    assert [o["metadata"]["name"] for o in decision.create] == ["mnist-trial-2"]
    assert ("Warning", "TrialFailed") in {(e[0], e[1]) for e in decision.events}
    assert job.status is not None and job.status.tuning is not None
    counts = job.status.tuning.trials
    assert (counts.complete, counts.failed, counts.running) == (1, 1, 1)
    # The last trial is pruned: every trial finished, so the summary Job runs.
    observed.pods.append(_trial(2, "Succeeded", "pruned"))
    decision = step(job, observed)
    assert [o["metadata"]["name"] for o in decision.create] == ["mnist-tune-summary"]
    counts = job.status.tuning.trials
    assert (counts.complete, counts.pruned, counts.failed) == (1, 1, 1)
    summary = PodView(name="mnist-tune-summary-x", unit="tune-summary", stage="tuning", rank=0,
                      role="worker", phase="Succeeded", exit_code=0, message=json.dumps({
                          "best": {"trial": 0, "params": {"learningRate": 0.01}, "value": 0.1},
                          "trials": {"total": 3, "complete": 1, "pruned": 1, "failed": 1},
                          "epochs_run": 7}), started=NOW, finished=NOW)
    observed.pods.append(summary)
    observed.jobs.add("mnist-tune-summary")
    decision = step(job, observed)
    assert job.status.stages["tuning"].phase == "Succeeded"
    assert job.status.tuning.best is not None and job.status.tuning.best.trial == 0
    assert ("Pod", "mnist-study") in decision.delete
    gang = [o for o in decision.create if o["kind"] == "Pod"]
    train_command = gang[0]["spec"]["containers"][0]["command"]
    assert train_command[train_command.index("--params") + 1] == '{"learningRate": 0.01}'
