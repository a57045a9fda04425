"""The reconcile decision: what the operator creates, deletes and reports for what it observes.

Each test builds the observation by hand (PodView objects) and feeds the previous decision's
status back, the way the kopf handler does between reconciles.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubetrain.api import parse_training_job
from kubetrain.api.resource import TrainingJob
from kubetrain.api.status import StageStatus, TrainingJobStatus, UnitStatus
from kubetrain.controller import builders as b
from kubetrain.controller.builders import OperatorSettings
from kubetrain.controller.observe import Observed, PodView, pod_view
from kubetrain.controller.reconcile import Decision, reconcile
from kubetrain.controller.validate import semantic_problems
from kubetrain.pipeline import status as st
from kubetrain.pipeline.plan import plan

SETTINGS = OperatorSettings()
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
UID = "9d1f0e2a-aaaa-bbbb-cccc-000000000001"
GANG = ["mnist-train-0", "mnist-train-1"]
GANG_SERVICES = {"mnist-train", "mnist-train-workers"}


def make_job(name: str = "mnist", **spec: Any) -> TrainingJob:
    manifest: dict[str, Any] = {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ml", "uid": UID, "generation": 3},
        "spec": {
            "dataset": {"builtin": "digits"},
            "model": {"builtin": "mlp"},
            "storage": {"pvc": "shared"},
            "training": {"epochs": 20, "resources": {"nodes": 2, "cpu": "2", "memory": "4Gi"}},
        },
    }
    manifest["spec"].update(copy.deepcopy(spec))
    return parse_training_job(manifest)


def pod(name: str, phase: str = "Running", *, unit: str = "train", stage: str = "training",
        rank: int | None = None, started: datetime | None = None,
        finished: datetime | None = None, **extra: Any) -> PodView:
    return PodView(name=name, unit=unit, stage=stage,
                   rank=int(name.rsplit("-", 1)[1]) if rank is None else rank,
                   role="worker", phase=phase, started=started, finished=finished, **extra)


def names(decision: Decision, kind: str | None = None) -> list[str]:
    return [o["metadata"]["name"] for o in decision.create if kind in (None, o["kind"])]


def reasons(decision: Decision) -> list[str]:
    return [reason for _, reason, _ in decision.events]


def condition(status: TrainingJobStatus, type_: str) -> Any:
    return next(c for c in status.conditions if c.type == type_)


def step(job: TrainingJob, observed: Observed, now: datetime = NOW) -> Decision:
    """One reconcile; its status becomes the job's status for the next one."""
    decision = reconcile(job, observed, SETTINGS, now)
    job.status = decision.status
    return decision


def started_gang(job: TrainingJob) -> Observed:
    """Run the first reconcile, and observe what it created as Running."""
    decision = step(job, Observed())
    assert sorted(names(decision, "Pod")) == GANG
    return Observed(pods=[pod(n, started=NOW) for n in GANG], services=set(GANG_SERVICES),
                    config_maps={"mnist-job"})


# ----- a new job -------------------------------------------------------------------------------


def test_new_job_is_planned_and_its_first_stage_created() -> None:
    job = make_job()
    decision = step(job, Observed())
    status = decision.status
    assert status.phase == "Running"
    assert status.start_time == "2025-03-01T12:00:00Z"
    assert status.observed_generation == 3
    assert status.current_stage == "training"
    assert status.stages["training"].phase == "Running"
    assert status.stages["training"].jobs == ["train"]
    assert status.stages["training"].units["train"].phase == "Running"
    assert names(decision) == ["mnist-job", "mnist-train-workers", "mnist-train",
                               "mnist-train-0", "mnist-train-1"]
    assert reasons(decision) == ["Planned", "StageRunning"]
    assert decision.events[0] == ("Normal", "Planned", "stages: training")
    assert condition(status, "Running").status == "True"
    assert decision.delete == []
    assert decision.delete_job is False
    # The decision does not change the job it was given.
    assert make_job().status is None


def test_first_stage_is_the_earliest_enabled_one() -> None:
    job = make_job(augmentation={"enabled": True, "shards": 2}, explanation={"enabled": True})
    decision = step(job, Observed())
    assert decision.events[0][2] == "stages: augmentation, training, explanation"
    assert names(decision) == ["mnist-job", "mnist-augment-0"]
    assert decision.create[1]["kind"] == "Job"
    assert set(decision.status.stages) == {"augmentation", "training", "explanation"}
    assert decision.status.stages["training"].phase == "Pending"


def test_creating_is_idempotent() -> None:
    job = make_job()
    observed = started_gang(job)
    decision = step(job, observed)
    assert decision.create == []
    assert decision.delete == []
    assert decision.status.phase == "Running"
    assert decision.events == []
    # Only what is missing is created again (a deleted Service, a lost pod).
    observed.services.discard("mnist-train")
    observed.pods = observed.pods[:1]
    decision = step(job, observed)
    assert names(decision) == ["mnist-train", "mnist-train-1"]


# ----- success ---------------------------------------------------------------------------------


TRAIN_RESULT = {
    "epochs_run": 14, "best_epoch": 11, "stopped_early": True, "stop_reason": "early_stopping",
    "final_metrics": {"train_loss": 0.05, "val_loss": 0.21, "val_accuracy": 0.95},
    "best_metrics": {"val_loss": 0.19, "val_accuracy": 0.962},
    "test_metrics": {"test_accuracy": 0.958, "test_loss": 0.2},
    "checkpoint": "/data/shared/kubetrain/ml/mnist/checkpoints/best.pt",
    "samples_per_second": 1234.5,
    "history": [{"epoch": 1, "val_loss": 1.0}],
    "epoch_seconds": [1.0, 2.0],
}


def succeeded_gang(result: dict[str, Any], seconds: float = 600.0) -> list[PodView]:
    start = NOW - timedelta(seconds=seconds)
    return [pod(n, "Succeeded", started=start, finished=NOW, exit_code=0,
                message=json.dumps(result) if n.endswith("-0") else None) for n in GANG]


def test_gang_success_fills_training_status_and_finishes_the_job() -> None:
    job = make_job()
    observed = started_gang(job)
    observed.pods = succeeded_gang(TRAIN_RESULT)
    decision = step(job, observed, NOW + timedelta(seconds=5))
    status = decision.status
    unit = status.stages["training"].units["train"]
    assert unit.phase == "Succeeded"
    assert unit.seconds == 1200.0  # two pods x 600 s
    assert unit.result["best_epoch"] == 11
    assert "history" not in unit.result and "epoch_seconds" not in unit.result
    training = status.training
    assert training is not None
    assert training.epoch == 14
    assert training.best_epoch == 11
    assert training.best_metrics == {"val_loss": 0.19, "val_accuracy": 0.962}
    assert training.test_metrics["test_accuracy"] == 0.958
    assert training.stopped_early is True
    assert training.checkpoint == "/data/shared/kubetrain/ml/mnist/checkpoints/best.pt"
    assert status.best == "test_accuracy=0.958"
    assert status.stages["training"].phase == "Succeeded"
    assert status.phase == "Succeeded"
    assert status.completion_time == "2025-03-01T12:00:05Z"
    assert status.current_stage is None
    assert condition(status, "Succeeded").reason == "AllStagesSucceeded"
    assert condition(status, "Running").status == "False"
    assert condition(status, "TrainingComplete").status == "True"
    assert reasons(decision) == ["StageSucceeded", "Succeeded"]
    assert decision.create == []


def test_gang_success_moves_on_to_the_next_stage() -> None:
    job = make_job(explanation={"enabled": True}, runPolicy={"backoffLimit": 2})
    observed = started_gang(job)
    observed.pods = succeeded_gang(TRAIN_RESULT)
    decision = step(job, observed)
    status = decision.status
    assert status.phase == "Running"
    assert status.stages["training"].phase == "Succeeded"
    assert status.stages["explanation"].phase == "Running"
    assert status.current_stage == "explanation"
    (job_obj,) = decision.create
    assert job_obj["kind"] == "Job"
    assert job_obj["metadata"]["name"] == "mnist-explain"
    assert job_obj["spec"]["backoffLimit"] == 2
    assert reasons(decision) == ["StageSucceeded", "StageRunning"]


def test_gang_is_not_done_until_every_rank_succeeded() -> None:
    job = make_job()
    observed = started_gang(job)
    done = succeeded_gang(TRAIN_RESULT)
    observed.pods = [done[0], pod("mnist-train-1", started=NOW)]
    decision = step(job, observed)
    assert decision.status.stages["training"].units["train"].phase == "Running"
    assert decision.status.phase == "Running"
    assert decision.status.training is None


def test_explanation_result_fills_findings_and_artifacts() -> None:
    job = make_job(explanation={"enabled": True})
    observed = started_gang(job)
    observed.pods = succeeded_gang(TRAIN_RESULT)
    step(job, observed)
    result = {"method": "gradient", "analysis": "/data/shared/x/explanation.json",
              "top_features": [{"feature": "pixel_21", "mean_abs_shap": 0.31}],
              "plots": {"summary": "/data/shared/x/shap_summary.png"}}
    observed.jobs.add("mnist-explain")
    observed.pods.append(pod("mnist-explain-x7k2p", "Succeeded", unit="explain",
                             stage="explanation", rank=0, message=json.dumps(result)))
    decision = step(job, observed)
    status = decision.status
    assert status.phase == "Succeeded"
    explanation = status.findings.explanation
    assert explanation is not None and explanation.method == "gradient"
    assert explanation.top_features[0].feature == "pixel_21"
    assert status.artifacts["shapSummary"] == "/data/shared/x/shap_summary.png"
    assert status.artifacts["explanation"] == "/data/shared/x/explanation.json"


# ----- failures and restarts -------------------------------------------------------------------


def failed_rank(exit_code: int = 137, reason: str = "OOMKilled",
                message: str | None = None) -> PodView:
    return pod("mnist-train-1", "Failed", started=NOW - timedelta(seconds=100), finished=NOW,
               exit_code=exit_code, reason=reason, message=message)


def test_failed_rank_restarts_the_whole_gang() -> None:
    job = make_job()
    observed = started_gang(job)
    observed.pods = [pod("mnist-train-0", started=NOW - timedelta(seconds=100)), failed_rank()]
    decision = step(job, observed)
    assert sorted(decision.delete) == [("Pod", "mnist-train-0"), ("Pod", "mnist-train-1")]
    assert decision.create == []
    unit = decision.status.stages["training"].units["train"]
    assert unit.restarts == 1
    assert unit.seconds == 200.0  # both pods ran 100 s before the restart
    assert decision.status.phase == "Running"
    (event,) = decision.events
    assert event[:2] == ("Warning", "GangRestart")
    assert "pod mnist-train-1 failed (exit code 137, OOMKilled)" in event[2]
    assert "(1/3)" in event[2]


def test_restart_waits_for_old_pods_then_recreates_them() -> None:
    job = make_job()
    observed = started_gang(job)
    observed.pods = [pod("mnist-train-0"), failed_rank()]
    step(job, observed)
    # The old pods are terminating: nothing is created, deleted or counted again.
    observed.pods = [pod("mnist-train-0", deleting=True),
                     replace_deleting(failed_rank())]
    decision = step(job, observed)
    assert decision.create == [] and decision.delete == [] and decision.events == []
    assert decision.status.stages["training"].units["train"].restarts == 1
    # Once they are gone, the gang is created again under the same names.
    observed.pods = []
    decision = step(job, observed)
    assert sorted(names(decision, "Pod")) == GANG
    assert names(decision, "Service") == []
    assert decision.status.stages["training"].units["train"].restarts == 1
    assert decision.status.phase == "Running"


def replace_deleting(view: PodView) -> PodView:
    return PodView(**{**view.__dict__, "deleting": True})


def test_restarts_exhausted_fail_the_job_with_pod_and_exit_code() -> None:
    job = make_job(runPolicy={"backoffLimit": 1})
    observed = started_gang(job)
    observed.pods = [pod("mnist-train-0"), failed_rank()]
    decision = step(job, observed)
    assert decision.status.stages["training"].units["train"].restarts == 1
    observed.pods = [pod("mnist-train-0"),
                     failed_rank(exit_code=1, reason="Error",
                                 message="Traceback ...\nRuntimeError: CUDA error: out of memory")]
    decision = step(job, observed, NOW + timedelta(seconds=30))
    status = decision.status
    assert status.phase == "Failed"
    failed = condition(status, "Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert failed.message == ("pod mnist-train-1 of train failed with exit code 1 (Error): "
                              "RuntimeError: CUDA error: out of memory")
    assert status.stages["training"].phase == "Failed"
    assert status.stages["training"].units["train"].phase == "Failed"
    assert status.completion_time == "2025-03-01T12:00:30Z"
    assert ("Warning", "BackoffLimitExceeded", failed.message) in decision.events
    assert decision.create == []
    # The surviving rank would wait on its dead peer forever: it is removed.
    assert decision.delete == [("Pod", "mnist-train-0")]


def test_backoff_limit_zero_fails_on_the_first_failure() -> None:
    job = make_job(runPolicy={"backoffLimit": 0})
    observed = started_gang(job)
    observed.pods = [pod("mnist-train-0", "Succeeded"), failed_rank()]
    decision = step(job, observed)
    assert decision.status.phase == "Failed"
    assert condition(decision.status, "Failed").reason == "BackoffLimitExceeded"
    assert "exit code 137 (OOMKilled)" in condition(decision.status, "Failed").message
    assert decision.delete == []  # nothing is still running


def test_batch_unit_fails_after_its_job_used_its_retries() -> None:
    job = make_job(explanation={"enabled": True}, runPolicy={"backoffLimit": 1})
    observed = started_gang(job)
    observed.pods = succeeded_gang(TRAIN_RESULT)
    step(job, observed)
    observed.jobs.add("mnist-explain")
    first = pod("mnist-explain-aaaaa", "Failed", unit="explain", stage="explanation", rank=0,
                exit_code=2, reason="Error")
    observed.pods.append(first)
    decision = step(job, observed)
    assert decision.status.phase == "Running"  # the Job retries its pod by itself
    assert decision.create == []
    observed.pods.append(PodView(**{**first.__dict__, "name": "mnist-explain-bbbbb"}))
    decision = step(job, observed)
    assert decision.status.phase == "Failed"
    assert condition(decision.status, "Failed").reason == "WorkUnitFailed"
    assert "mnist-explain-bbbbb of explain failed with exit code 2" in \
        condition(decision.status, "Failed").message
    assert decision.status.stages["explanation"].phase == "Failed"


# ----- suspend and resume ----------------------------------------------------------------------


def test_suspend_removes_running_pods_and_resume_recreates_them() -> None:
    job = make_job()
    observed = started_gang(job)
    job.spec.run_policy.suspend = True
    decision = step(job, observed)
    assert sorted(decision.delete) == [("Pod", "mnist-train-0"), ("Pod", "mnist-train-1")]
    assert decision.create == []
    assert decision.status.phase == "Suspended"
    assert condition(decision.status, "Suspended").status == "True"
    assert reasons(decision) == ["Suspended"]
    # Still suspended, pods gone: nothing more to do, no new event.
    observed.pods = []
    decision = step(job, observed)
    assert decision.create == [] and decision.delete == [] and decision.events == []
    assert decision.status.phase == "Suspended"
    # Resume.
    job.spec.run_policy.suspend = False
    decision = step(job, observed)
    assert decision.status.phase == "Running"
    assert condition(decision.status, "Suspended").status == "False"
    assert "Resumed" in reasons(decision)
    assert sorted(names(decision, "Pod")) == GANG
    # A suspend is not a failure: it does not use up a restart.
    assert decision.status.stages["training"].units["train"].restarts == 0


def test_suspend_before_start_creates_nothing() -> None:
    job = make_job(runPolicy={"suspend": True})
    decision = step(job, Observed())
    assert decision.status.phase == "Suspended"
    assert decision.create == []


def test_suspend_deletes_unfinished_batch_jobs_only() -> None:
    job = make_job(augmentation={"enabled": True, "shards": 2})
    step(job, Observed())
    observed = Observed(jobs={"mnist-augment-0"}, config_maps={"mnist-job"},
                        pods=[pod("mnist-augment-0-zz", "Succeeded", unit="augment-0",
                                  stage="augmentation", rank=0)])
    step(job, observed)  # augment-0 done, augment-1 created
    assert job.status is not None
    assert job.status.stages["augmentation"].units["augment-0"].phase == "Succeeded"
    observed.jobs.add("mnist-augment-1")
    observed.pods.append(pod("mnist-augment-1-yy", unit="augment-1", stage="augmentation",
                             rank=0))
    job.spec.run_policy.suspend = True
    decision = step(job, observed)
    assert sorted(decision.delete) == [("Job", "mnist-augment-1"), ("Pod", "mnist-augment-1-yy")]


# ----- deadlines, invalid specs, terminal jobs -------------------------------------------------


def test_active_deadline_fails_the_job_and_stops_its_pods() -> None:
    job = make_job(runPolicy={"activeDeadlineSeconds": 600})
    observed = started_gang(job)
    decision = step(job, observed, NOW + timedelta(seconds=599))
    assert decision.status.phase == "Running"
    decision = step(job, observed, NOW + timedelta(seconds=601))
    status = decision.status
    assert status.phase == "Failed"
    assert condition(status, "Failed").reason == "DeadlineExceeded"
    assert "600" in condition(status, "Failed").message
    assert sorted(decision.delete) == [("Pod", "mnist-train-0"), ("Pod", "mnist-train-1")]
    assert decision.create == []


def test_missing_pvc_is_invalid_and_nothing_is_created() -> None:
    job = make_job(storage={})
    decision = step(job, Observed())
    status = decision.status
    assert status.phase == "Failed"
    invalid = condition(status, "Invalid")
    assert invalid.status == "True"
    assert invalid.reason == "InvalidSpec"
    assert invalid.message.startswith("spec.storage.pvc:")
    assert condition(status, "Failed").reason == "InvalidSpec"
    assert decision.create == []
    assert decision.events == [("Warning", "InvalidSpec", invalid.message)]


def test_operator_default_pvc_makes_the_same_job_valid() -> None:
    job = make_job(storage={})
    decision = reconcile(job, Observed(), OperatorSettings(default_pvc="runs"), NOW)
    assert decision.status.phase == "Running"
    pods = [o for o in decision.create if o["kind"] == "Pod"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pods[0]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == ["runs"]


def test_local_dataset_path_is_invalid() -> None:
    job = make_job(dataset={"uri": "data/train.csv", "target": "label"})
    decision = step(job, Observed())
    assert decision.status.phase == "Failed"
    message = condition(decision.status, "Invalid").message
    assert message.startswith("spec.dataset.uri: 'data/train.csv' is a local path")
    assert decision.create == []


def test_pvc_dataset_uri_is_valid() -> None:
    job = make_job(dataset={"uri": "pvc://datasets/train.csv", "target": "label"})
    decision = step(job, Observed())
    assert decision.status.phase == "Running"


def test_custom_training_command_is_reported_invalid() -> None:
    # The planner marks the stage NotAvailable, but the operator refuses the spec up front:
    # the user learns at once, before any earlier stage spent compute.
    job = make_job(training={"command": ["python", "train.py"]},
                   augmentation={"enabled": True})
    training = plan(job.spec).stage("training")
    assert training is not None and training.available is False
    decision = step(job, Observed())
    assert decision.status.phase == "Failed"
    assert "spec.training.command" in condition(decision.status, "Invalid").message
    assert decision.create == []


def test_invalid_spec_lists_every_problem() -> None:
    job = make_job(storage={}, dataset={"uri": "/home/me/x.npz"})
    problems = semantic_problems(job, SETTINGS)
    assert [p.split(":")[0] for p in problems] == ["spec.storage.pvc", "spec.dataset.uri"]
    decision = step(job, Observed())
    assert condition(decision.status, "Invalid").message == "; ".join(problems)


def test_spec_turned_invalid_while_running_stops_the_pods() -> None:
    job = make_job()
    observed = started_gang(job)
    job.spec.storage.pvc = None
    decision = step(job, observed)
    assert decision.status.phase == "Failed"
    assert decision.create == []
    assert sorted(decision.delete) == [("Pod", "mnist-train-0"), ("Pod", "mnist-train-1")]


def test_entrypoint_needs_an_image() -> None:
    job = make_job(model={"entrypoint": "mypkg.models:build"})
    assert any(p.startswith("spec.image:") for p in semantic_problems(job, SETTINGS))
    job = make_job(model={"entrypoint": "mypkg.models:build"}, image="me/worker:1")
    assert semantic_problems(job, SETTINGS) == []


def test_terminal_job_creates_nothing() -> None:
    for phase in ("Succeeded", "Failed"):
        job = make_job()
        job.status = TrainingJobStatus(phase=phase, completion_time="2025-03-01T11:00:00Z")
        decision = reconcile(job, Observed(), SETTINGS, NOW)
        assert decision.create == [] and decision.delete == [] and decision.events == []
        assert decision.status.phase == phase
        assert decision.delete_job is False


def test_ttl_deletes_the_job_only_after_it_passed() -> None:
    job = make_job(runPolicy={"ttlSecondsAfterFinished": 300})
    job.status = TrainingJobStatus(phase="Succeeded", completion_time="2025-03-01T12:00:00Z")
    assert reconcile(job, Observed(), SETTINGS, NOW + timedelta(seconds=299)).delete_job is False
    assert reconcile(job, Observed(), SETTINGS, NOW + timedelta(seconds=300)).delete_job is True
    running = make_job(runPolicy={"ttlSecondsAfterFinished": 0})
    assert reconcile(running, Observed(), SETTINGS, NOW + timedelta(days=1)).delete_job is False


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


# ----- names -----------------------------------------------------------------------------------


def test_longest_valid_name_gives_child_names_that_fit() -> None:
    """Every Service, Pod and Job name of the longest accepted job name fits in 63."""
    spec: dict[str, Any] = {"augmentation": {"enabled": True, "shards": 64},
                            "training": {"crossValidation": {"folds": 20}},
                            "explanation": {"enabled": True}}
    length = 63
    while semantic_problems(make_job("j" * length, **spec), SETTINGS):
        length -= 1
    job = make_job("j" * length, **spec)
    assert semantic_problems(make_job("j" * (length + 1), **spec), SETTINGS)[0].startswith(
        "metadata.name: at most")
    objects = [b.job_config_map(job)]
    for stage in plan(job.spec).stages:
        for unit in stage.units:
            if unit.stage == "training":
                objects += [*b.gang_services(job, unit), *b.gang_pods(job, unit, SETTINGS)]
            else:
                objects.append(b.batch_job(job, unit, SETTINGS))
    longest = max(objects, key=lambda o: len(o["metadata"]["name"]))
    assert len(longest["metadata"]["name"]) <= 63, longest["metadata"]["name"]
    for obj in objects:
        if obj["kind"] == "Pod":
            assert len(obj["spec"]["subdomain"]) <= 63


def test_name_starting_with_a_digit_is_invalid() -> None:
    # Service names are DNS-1035 labels: the API server refuses "2024-run-train".
    job = make_job("2024-run")
    assert any(p.startswith("metadata.name:") for p in semantic_problems(job, SETTINGS))
    decision = step(job, Observed())
    assert decision.status.phase == "Failed"
    assert decision.create == []


# ----- observe: pods as the API returns them ---------------------------------------------------


def test_pod_view_reads_labels_and_the_termination_message() -> None:
    result = {"epochs_run": 3}
    view = pod_view({
        "metadata": {"name": "mnist-train-1", "creationTimestamp": "2025-03-01T11:00:00Z",
                     "labels": {b.LABEL_UNIT: "train", b.LABEL_STAGE: "training",
                                b.LABEL_RANK: "1"}},
        "status": {"phase": "Succeeded", "startTime": "2025-03-01T11:00:05Z",
                   "containerStatuses": [{"state": {"terminated": {
                       "exitCode": 0, "reason": "Completed", "message": json.dumps(result),
                       "startedAt": "2025-03-01T11:00:10Z",
                       "finishedAt": "2025-03-01T11:10:10Z"}}}]},
    })
    assert (view.name, view.unit, view.stage, view.rank) == ("mnist-train-1", "train",
                                                             "training", 1)
    assert view.phase == "Succeeded" and view.done and not view.deleting
    assert view.exit_code == 0 and view.reason == "Completed"
    assert view.result == result
    assert view.started == datetime(2025, 3, 1, 11, 0, 10, tzinfo=UTC)
    assert view.finished == datetime(2025, 3, 1, 11, 10, 10, tzinfo=UTC)
    assert view.created == datetime(2025, 3, 1, 11, 0, 0, tzinfo=UTC)


def test_pod_view_of_a_running_deleting_pod() -> None:
    view = pod_view({
        "metadata": {"name": "mnist-train-0", "deletionTimestamp": "2025-03-01T12:00:00Z",
                     "labels": {b.LABEL_UNIT: "train", b.LABEL_RANK: "0"}},
        "status": {"phase": "Running", "startTime": "2025-03-01T11:00:00Z",
                   "containerStatuses": [{"state": {"running": {
                       "startedAt": "2025-03-01T11:00:20Z"}}}]},
    })
    assert view.deleting is True
    assert view.done is False
    assert view.started == datetime(2025, 3, 1, 11, 0, 20, tzinfo=UTC)
    assert view.finished is None
    assert view.result is None


def test_non_json_termination_message_is_no_result() -> None:
    assert pod("x-0", message="Traceback: boom").result is None
    assert pod("x-0", message="[1, 2]").result is None
    assert pod("x-0", message='{"a": 1}').result == {"a": 1}
