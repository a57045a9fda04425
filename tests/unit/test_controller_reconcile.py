"""The reconcile decision: what the operator creates and deletes for the pods it observes.

Each test runs reconciles on a fake cluster (reconcile_cases.Cluster) that carries every
decision out and feeds its status back, the way the kopf handler does between reconciles; the
test moves the pods on (running, succeeded with a result, failed, vanished) in between.
"""

from __future__ import annotations

import json

from kubetrain.controller import builders as b
from kubetrain.pipeline.actions import Event
from reconcile_cases import (
    GANG,
    GANG_SERVICES,
    STORAGE,
    Cluster,
    arg,
    command,
    condition,
    created,
    deleted,
    make_job,
    names,
    reasons,
    running_gang,
    sweep,
    train_result,
    unit_status,
)

# ----- a new job -----------------------------------------------------------------------------


def test_new_job_creates_its_first_stage_pods_and_the_job_config_map() -> None:
    job = make_job()
    cluster = Cluster(job)
    decision = cluster.reconcile()
    status = decision.status
    assert status.phase == "Running"
    assert status.start_time == "2025-03-01T12:00:00Z"
    assert status.observed_generation == 3
    assert status.current_stage == "training"
    assert status.stages["training"].phase == "Running"
    assert status.stages["training"].jobs == ["train"]
    train = status.stages["training"].units["train"]
    assert (train.phase, train.attempt, train.restarts) == ("Running", 0, 0)
    assert names(decision) == ["mnist-job", *GANG_SERVICES, *GANG]
    assert [p["metadata"]["labels"][b.LABEL_ATTEMPT] for p in decision.create[3:]] == ["0", "0"]
    assert reasons(decision) == ["Planned", "StageRunning"]
    assert decision.events[0] == Event("Normal", "Planned", "stages: training")
    assert condition(status, "Running").status == "True"
    assert decision.delete == []
    assert decision.delete_job is False
    # The decision does not change the job it was given.
    assert make_job().status is None


def test_first_stage_is_the_earliest_enabled_one() -> None:
    cluster = Cluster(make_job(augmentation={"enabled": True, "shards": 2},
                               explanation={"enabled": True}))
    decision = cluster.reconcile()
    assert decision.events[0].message == "stages: augmentation, training, explanation"
    # Both shards at once (augmentation.parallelism defaults to 4), each a bare pod.
    assert names(decision) == ["mnist-job", "mnist-augment-0", "mnist-augment-1"]
    assert {o["kind"] for o in decision.create} == {"ConfigMap", "Pod"}
    assert arg(created(decision, "mnist-augment-1"), "--shard") == "1"
    assert set(decision.status.stages) == {"augmentation", "training", "explanation"}
    assert decision.status.stages["training"].phase == "Pending"


def test_creating_is_idempotent() -> None:
    cluster = Cluster(make_job())
    cluster.reconcile()
    # Still Pending (not scheduled yet), then Running: nothing is created or deleted again.
    decision = cluster.reconcile()
    assert decision.create == [] and decision.delete == [] and decision.events == []
    cluster.run()
    cluster.tick()
    decision = cluster.reconcile()
    assert decision.create == [] and decision.delete == [] and decision.events == []
    assert decision.status.phase == "Running"
    assert cluster.pod_names() == GANG


def test_a_pod_launched_by_a_reconcile_whose_status_was_lost_is_adopted_not_created_twice(
) -> None:
    cluster = Cluster(make_job())
    cluster.reconcile(status_written=False)
    assert cluster.job.status is None
    cluster.run()
    cluster.tick(30)
    decision = cluster.reconcile()  # the fake cluster refuses a second create of a pod
    assert decision.create == [] and decision.delete == []
    train = unit_status(cluster.job, "train")
    assert (train.phase, train.attempt) == ("Running", 0)
    assert train.seconds == 30.0
    assert decision.status.stages["training"].phase == "Running"


def test_a_sweep_launched_by_a_reconcile_whose_status_was_lost_is_adopted() -> None:
    cluster = Cluster(make_job(tuning=sweep()))
    cluster.reconcile(status_written=False)
    cluster.run()
    cluster.tick()
    decision = cluster.reconcile()
    assert decision.create == [] and decision.delete == []
    assert cluster.pod_names() == ["mnist-study", "mnist-trial-0", "mnist-trial-1"]
    assert unit_status(cluster.job, "trial-1").phase == "Running"


def test_a_gang_created_only_in_part_is_deleted_and_created_whole() -> None:
    cluster = Cluster(make_job())
    cluster.reconcile(status_written=False)
    cluster.vanish("mnist-train-1")  # its create failed: the handler raised, no status patch
    cluster.run()
    for _ in range(3):
        cluster.reconcile()
        cluster.settle()
    assert cluster.pod_names("train") == GANG


# ----- success -------------------------------------------------------------------------------


def test_gang_success_fills_training_status_and_finishes_the_job() -> None:
    cluster = running_gang()
    cluster.tick(590)  # the gang ran 600 s
    cluster.succeed_unit("train", train_result())
    decision = cluster.reconcile()
    status = decision.status
    unit = status.stages["training"].units["train"]
    assert unit.phase == "Succeeded"
    assert unit.seconds == 600.0  # wall seconds of the gang; cost counts both nodes
    assert unit.result["best_epoch"] == 11
    assert "epoch_seconds" not in unit.result  # bulky lists stay in storage
    training = status.training
    assert training is not None
    assert training.epoch == 14
    assert training.best_epoch == 11
    assert training.best_metrics == {"val_loss": 0.19, "val_accuracy": 0.962}
    assert training.test_metrics["test_accuracy"] == 0.958
    assert training.stopped_early is True
    assert training.checkpoint == f"{STORAGE}/train/checkpoints/best.pt"
    assert status.best == "test_accuracy=0.958"
    assert status.stages["training"].phase == "Succeeded"
    assert status.phase == "Succeeded"
    assert status.completion_time == "2025-03-01T12:10:00Z"
    assert status.current_stage is None
    assert condition(status, "Succeeded").reason == "AllStagesSucceeded"
    assert condition(status, "Running").status == "False"
    assert condition(status, "TrainingComplete").status == "True"
    assert status.artifacts["model"] == f"{STORAGE}/train/model.pt"
    assert status.artifacts["report"] == f"{STORAGE}/report.md"
    assert reasons(decision) == ["StageSucceeded", "Succeeded"]
    assert decision.delete == []


def test_the_report_pod_is_created_when_the_job_ends_and_then_left_alone() -> None:
    cluster = running_gang()
    cluster.succeed_unit("train", train_result())
    decision = cluster.reconcile()
    assert names(decision) == ["mnist-final-status", "mnist-report"]
    report = created(decision, "mnist-report")
    assert command(report)[:3] == ["python", "-m", "kubetrain.workloads.finish"]
    assert arg(report, "--storage") == STORAGE
    final = json.loads(created(decision, "mnist-final-status")["data"]["status.json"])
    assert final["phase"] == "Succeeded"
    assert final["training"]["bestEpoch"] == 11
    assert report["spec"]["restartPolicy"] == "Never"
    # The report pod runs after the job ended: it is neither stopped nor created again.
    cluster.run("mnist-report")
    for _ in range(2):
        cluster.tick()
        decision = cluster.reconcile()
        assert decision.create == [] and decision.delete == [] and decision.events == []
    assert cluster.job.status is not None and cluster.job.status.phase == "Succeeded"


def test_gang_success_moves_on_to_the_next_stage() -> None:
    cluster = running_gang(explanation={"enabled": True})
    cluster.succeed_unit("train", train_result())
    decision = cluster.reconcile()
    status = decision.status
    assert status.phase == "Running"
    assert status.stages["training"].phase == "Succeeded"
    assert status.stages["explanation"].phase == "Running"
    assert status.current_stage == "explanation"
    # A single-process unit is one bare pod named after the unit.
    assert names(decision) == ["mnist-explain"]
    explain = created(decision, "mnist-explain")
    assert explain["spec"]["restartPolicy"] == "Never"
    assert command(explain)[:3] == ["python", "-m", "kubetrain.workloads.explain"]
    assert reasons(decision) == ["StageSucceeded", "StageRunning"]


def test_gang_is_not_done_until_every_rank_succeeded() -> None:
    cluster = running_gang()
    cluster.succeed("mnist-train-0", train_result())
    decision = cluster.reconcile()
    assert decision.status.stages["training"].units["train"].phase == "Running"
    assert decision.status.phase == "Running"
    assert decision.status.training is None
    assert decision.create == [] and decision.delete == []
    cluster.succeed("mnist-train-1")
    assert cluster.reconcile().status.phase == "Succeeded"


def test_explanation_result_fills_findings_and_artifacts() -> None:
    cluster = running_gang(explanation={"enabled": True})
    cluster.succeed_unit("train", train_result())
    cluster.reconcile()
    cluster.run("mnist-explain")
    cluster.succeed("mnist-explain", {
        "unit": "explain", "status": "succeeded", "method": "gradient",
        "analysis": f"{STORAGE}/explanation.json",
        "top_features": [{"feature": "pixel_21", "mean_abs_shap": 0.31}],
        "plots": {"summary": f"{STORAGE}/shap_summary.png"}})
    decision = cluster.reconcile()
    status = decision.status
    assert status.phase == "Succeeded"
    explanation = status.findings.explanation
    assert explanation is not None and explanation.method == "gradient"
    assert explanation.top_features[0].feature == "pixel_21"
    assert status.artifacts["shapSummary"] == f"{STORAGE}/shap_summary.png"
    assert status.artifacts["explanation"] == f"{STORAGE}/explanation.json"


def test_augmentation_merge_starts_after_every_shard_succeeded() -> None:
    cluster = Cluster(make_job(augmentation={"enabled": True, "shards": 2}))
    cluster.reconcile()
    cluster.run()
    shard = {"status": "succeeded", "kind": "tabular", "added": 5}
    cluster.succeed("mnist-augment-0", {**shard, "shard": 0, "shards": 2})
    assert cluster.reconcile().create == []
    cluster.succeed("mnist-augment-1", {**shard, "shard": 1, "shards": 2})
    decision = cluster.reconcile()
    assert names(decision) == ["mnist-augment-merge"]
    assert command(created(decision, "mnist-augment-merge"))[3:6] == ["--merge", "--shards",
                                                                       "2"]
    cluster.run()
    cluster.succeed("mnist-augment-merge", {**shard, "added": 10,
                                            "counts_before": {"0": 3}, "counts_after": {"0": 13}})
    decision = cluster.reconcile()
    assert decision.status.augmentation is not None
    assert decision.status.augmentation.added == 10
    assert names(decision) == [*GANG_SERVICES, *GANG]


# ----- failures and restarts -----------------------------------------------------------------


def test_failed_rank_deletes_the_whole_gang_and_counts_a_restart() -> None:
    cluster = running_gang()
    cluster.tick(90)
    cluster.fail("mnist-train-1", 137, "OOMKilled")
    decision = cluster.reconcile()
    assert sorted(decision.delete) == [("Pod", "mnist-train-0", 30),
                                       ("Pod", "mnist-train-1", 30)]
    assert decision.create == []
    unit = decision.status.stages["training"].units["train"]
    assert (unit.restarts, unit.attempt, unit.phase) == (1, 1, "Pending")
    assert unit.seconds == 100.0 and unit.prior_seconds == 100.0
    assert decision.status.phase == "Running"
    (event,) = decision.events
    assert (event.type, event.reason) == ("Warning", "UnitRestart")
    assert "train exited with code 137 (OOMKilled)" in event.message
    assert "restarting the whole gang" in event.message
    assert "(1/3)" in event.message


def test_restart_waits_until_the_old_pods_are_gone_then_creates_the_next_attempt() -> None:
    cluster = running_gang()
    cluster.fail("mnist-train-1")
    cluster.reconcile()
    # The old pods are terminating: nothing is created, deleted or counted again.
    decision = cluster.reconcile()
    assert decision.create == [] and decision.delete == [] and decision.events == []
    assert unit_status(cluster.job, "train").restarts == 1
    # Once they are gone, the gang is created again under the same names, as attempt 1.
    cluster.settle()
    decision = cluster.reconcile()
    assert names(decision) == GANG  # the config map and Services still exist
    assert [cluster.attempt(n) for n in GANG] == [1, 1]
    train = unit_status(cluster.job, "train")
    assert (train.phase, train.attempt, train.restarts) == ("Running", 1, 1)
    assert decision.status.phase == "Running"
    # The new attempt succeeds: the job does.
    cluster.run()
    cluster.succeed_unit("train", train_result())
    assert cluster.reconcile().status.phase == "Succeeded"


def test_old_attempt_pods_are_never_counted() -> None:
    cluster = running_gang()
    cluster.fail("mnist-train-1")
    cluster.reconcile()  # restart: attempt 1, both pods deleted
    # The deletions never happened (the API call failed), and the surviving rank went on to
    # finish: the pods of attempt 0 now all look done.
    for pod in cluster.pods.values():
        del pod["metadata"]["deletionTimestamp"]
    cluster.succeed("mnist-train-0", train_result())
    cluster.succeed("mnist-train-1", train_result())
    decision = cluster.reconcile()
    train = unit_status(cluster.job, "train")
    assert (train.phase, train.attempt) == ("Pending", 1)
    assert decision.status.phase == "Running" and decision.status.training is None
    assert deleted(decision) == GANG  # stopped again
    assert decision.create == []


def test_restarts_exhausted_fail_the_job_naming_the_unit_and_exit_code() -> None:
    cluster = running_gang(runPolicy={"backoffLimit": 1})
    cluster.fail("mnist-train-1", 137, "OOMKilled")
    cluster.reconcile()
    cluster.settle()
    cluster.reconcile()
    cluster.run()
    cluster.tick(20)
    cluster.fail("mnist-train-1", 1, "Error",
                 "Traceback ...\nRuntimeError: CUDA error: out of memory")
    decision = cluster.reconcile()
    status = decision.status
    assert status.phase == "Failed"
    failed = condition(status, "Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert failed.message == ("train exited with code 1 (Error): "
                              "RuntimeError: CUDA error: out of memory")
    assert status.stages["training"].phase == "Failed"
    train = status.stages["training"].units["train"]
    assert (train.phase, train.restarts, train.attempt) == ("Failed", 1, 1)
    assert train.message == failed.message
    assert status.completion_time == "2025-03-01T12:00:30Z"
    assert Event("Warning", "BackoffLimitExceeded", failed.message) in decision.events
    assert names(decision) == ["mnist-final-status", "mnist-report"]


def test_a_gang_that_failed_for_good_has_its_surviving_rank_deleted() -> None:
    cluster = running_gang(runPolicy={"backoffLimit": 0})
    cluster.fail("mnist-train-1")
    decision = cluster.reconcile()
    assert decision.status.phase == "Failed"
    # The surviving rank would wait on its dead peer until its collective times out; it is
    # deleted by this reconcile or the next one.
    later = cluster.reconcile()
    assert "mnist-train-0" in [*deleted(decision), *deleted(later)]


def test_backoff_limit_zero_fails_on_the_first_failure() -> None:
    cluster = running_gang(runPolicy={"backoffLimit": 0})
    cluster.succeed("mnist-train-0")
    cluster.fail("mnist-train-1", 137, "OOMKilled")
    decision = cluster.reconcile()
    assert decision.status.phase == "Failed"
    failed = condition(decision.status, "Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert "train exited with code 137 (OOMKilled)" in failed.message
    assert "UnitRestart" not in reasons(decision)


def test_single_pod_unit_is_restarted_by_the_operator_then_fails_the_job() -> None:
    cluster = running_gang(explanation={"enabled": True}, runPolicy={"backoffLimit": 1})
    cluster.succeed_unit("train", train_result())
    cluster.reconcile()
    cluster.run()
    cluster.fail("mnist-explain", 2)
    decision = cluster.reconcile()
    assert decision.status.phase == "Running"
    assert deleted(decision) == ["mnist-explain"]
    assert reasons(decision) == ["UnitRestart"]
    cluster.settle()
    decision = cluster.reconcile()
    assert names(decision) == ["mnist-explain"]
    assert cluster.attempt("mnist-explain") == 1
    cluster.run()
    cluster.fail("mnist-explain", 2, message="ValueError: no such feature")
    decision = cluster.reconcile()
    status = decision.status
    assert status.phase == "Failed"
    assert condition(status, "Failed").reason == "WorkUnitFailed"
    assert condition(status, "Failed").message == (
        "explain exited with code 2 (Error): ValueError: no such feature")
    assert status.stages["explanation"].phase == "Failed"
    assert status.stages["training"].phase == "Succeeded"


def test_a_vanished_training_pod_is_relaunched_without_using_a_restart() -> None:
    cluster = Cluster(make_job(training={"resources": {"nodes": 1}}))
    cluster.reconcile()
    cluster.run()
    cluster.tick(60)
    cluster.reconcile()
    cluster.vanish("mnist-train-0")  # kubectl delete pod, a drained node
    decision = cluster.reconcile()
    assert names(decision) == ["mnist-train-0"]
    assert cluster.attempt("mnist-train-0") == 1
    assert reasons(decision) == ["UnitLost"]
    train = unit_status(cluster.job, "train")
    assert (train.phase, train.attempt, train.restarts) == ("Running", 1, 0)
    assert train.seconds == 60.0  # the lost attempt's seconds are still paid for
    assert decision.status.phase == "Running"


def test_a_gang_that_lost_a_pod_is_deleted_and_relaunched_whole() -> None:
    cluster = running_gang()
    cluster.vanish("mnist-train-1")
    decision = cluster.reconcile()
    assert deleted(decision) == ["mnist-train-0"]
    assert decision.create == []
    assert reasons(decision) == ["UnitLost"]
    cluster.settle()
    decision = cluster.reconcile()
    assert names(decision) == GANG
    assert [cluster.attempt(n) for n in GANG] == [1, 1]
    assert unit_status(cluster.job, "train").restarts == 0
