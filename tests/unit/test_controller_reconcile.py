"""The reconcile decision: what the operator creates, deletes and reports for what it observes.

Each test builds the observation by hand (PodView objects) and feeds the previous decision's
status back, the way the kopf handler does between reconciles.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from kubetrain.api.status import TrainingJobStatus
from kubetrain.controller import builders as b
from kubetrain.controller.builders import OperatorSettings
from kubetrain.controller.observe import Observed, PodView
from kubetrain.controller.reconcile import reconcile
from kubetrain.controller.validate import semantic_problems
from kubetrain.pipeline.plan import plan
from reconcile_cases import (
    GANG,
    NOW,
    SETTINGS,
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
