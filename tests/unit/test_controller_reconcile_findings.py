"""The reconcile decision's findings (cost, budget, overfitting, progress) and the tuning stage
on Kubernetes: the study-server pod and Service, trial pods, the summary pod, and the best
parameters reaching the training pods."""

from __future__ import annotations

from typing import Any

import pytest
from kubetrain.api.status import BestTrial, StageStatus, TrainingJobStatus, TuningStatus, UnitStatus
from kubetrain.pipeline.plan import trial_seed
from reconcile_cases import (
    GANG,
    GANG_SERVICES,
    PRICES,
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
    summary_result,
    sweep,
    train_result,
    trial_result,
    unit_status,
)

# ----- cost ----------------------------------------------------------------------------------


def test_cost_is_pod_seconds_times_requests() -> None:
    cluster = Cluster(make_job(training={"resources": {"nodes": 2, "gpusPerNode": 1, "cpu": "2",
                                                       "memory": "4Gi"}},
                               findings={"cost": {"prices": PRICES}}))
    cluster.reconcile()
    cluster.run()
    cluster.tick(1800)
    cluster.succeed_unit("train", train_result())
    decision = cluster.reconcile()
    cost = decision.status.findings.cost
    assert cost is not None
    # Two pods x 0.5 h = 1 pod-hour of (2 CPU, 4 GiB, 1 GPU).
    assert cost.cpu_hours == 2.0
    assert cost.gpu_hours == 1.0
    assert cost.memory_gi_b_hours == 4.0
    assert cost.total == pytest.approx(2 * 0.1 + 4 * 0.01 + 1 * 2.0)
    assert cost.currency == "EUR"
    assert decision.status.stages["training"].cost == pytest.approx(2.24)
    assert unit_status(cluster.job, "train").cost == pytest.approx(2.24)


def test_cost_runs_from_pod_start_times_while_the_pods_run() -> None:
    cluster = Cluster(make_job(findings={"cost": {"prices": PRICES}}))
    cluster.reconcile()
    cluster.tick(600)  # Pending, waiting for a node
    cluster.run()
    cluster.tick(1800)
    decision = cluster.reconcile()
    cost = decision.status.findings.cost
    assert cost is not None
    assert unit_status(cluster.job, "train").seconds == 1800.0
    assert cost.total == pytest.approx(2 * 0.5 * (2 * 0.1 + 4 * 0.01))
    cluster.tick(1800)
    later = cluster.reconcile().status.findings.cost
    assert later is not None and later.total == pytest.approx(2 * cost.total)


def test_cost_after_best_epoch_comes_from_the_training_result() -> None:
    cluster = Cluster(make_job(training={"resources": {"nodes": 1, "cpu": "1", "memory": "1Gi"}},
                               findings={"cost": {"prices": PRICES}}))
    cluster.reconcile()
    cluster.run()
    cluster.tick(7200)
    cluster.succeed("mnist-train-0", train_result(seconds_after_best=3600.0))
    decision = cluster.reconcile()
    cost = decision.status.findings.cost
    assert cost is not None
    assert cost.total == pytest.approx(2 * (0.1 + 0.01))
    assert cost.after_best_epoch == pytest.approx(0.11)


# ----- budget --------------------------------------------------------------------------------


def test_budget_stop_deletes_running_pods_with_a_short_grace_and_fails_the_job() -> None:
    cluster = Cluster(make_job(findings={"cost": {"prices": PRICES, "budget": {
        "maxCost": 0.01, "action": "stop"}}}))
    cluster.reconcile()
    cluster.run()
    cluster.tick(60)
    assert cluster.reconcile().status.phase == "Running"  # 0.0081 so far
    cluster.tick(60)
    decision = cluster.reconcile()
    status = decision.status
    assert sorted(decision.delete) == [("Pod", "mnist-train-0", 5), ("Pod", "mnist-train-1", 5)]
    cost = status.findings.cost
    assert cost is not None and cost.total == pytest.approx(2 * 120 / 3600 * 0.24)
    assert cost.budget is not None and cost.budget.exceeded is True
    assert condition(status, "BudgetExceeded").status == "True"
    assert status.phase == "Failed"
    assert condition(status, "Failed").reason == "BudgetExceeded"
    assert status.stages["training"].phase == "Failed"
    assert "BudgetExceeded" in reasons(decision)
    assert names(decision) == ["mnist-final-status", "mnist-report"]


def budget_job(action: str = "stop") -> Cluster:
    """A job whose augmentation already cost 0.24 (two 2-CPU 4-GiB pods for 0.5 h each)."""
    job = make_job(augmentation={"enabled": True, "shards": 1},
                   findings={"cost": {"prices": PRICES,
                                      "budget": {"maxCost": 0.01, "action": action}}})
    status = TrainingJobStatus(phase="Running", start_time="2025-03-01T11:00:00Z")
    status.stages["augmentation"] = StageStatus(
        phase="Succeeded", units={
            "augment-0": UnitStatus(phase="Succeeded", seconds=1800.0),
            "augment-merge": UnitStatus(phase="Succeeded", seconds=1800.0)})
    status.stages["training"] = StageStatus()
    job.status = status
    cluster = Cluster(job)
    cluster.config_maps.add("mnist-job")
    return cluster


def test_budget_reached_stops_before_launching_more_work() -> None:
    cluster = budget_job()
    decision = cluster.reconcile()
    status = decision.status
    cost = status.findings.cost
    assert cost is not None and cost.total == pytest.approx(0.24)
    assert cost.budget is not None and cost.budget.exceeded is True
    assert condition(status, "BudgetExceeded").status == "True"
    assert status.phase == "Failed"
    assert condition(status, "Failed").reason == "BudgetExceeded"
    assert names(decision) == ["mnist-final-status", "mnist-report"]  # no training pod
    assert "BudgetExceeded" in reasons(decision)


def test_budget_warn_only_sets_the_condition() -> None:
    cluster = budget_job("warn")
    decision = cluster.reconcile()
    assert condition(decision.status, "BudgetExceeded").status == "True"
    assert decision.status.phase == "Running"
    assert names(decision) == [*GANG_SERVICES, *GANG]
    # The warning is posted once, not on every reconcile.
    assert "BudgetExceeded" not in reasons(cluster.reconcile())


# ----- overfitting and progress --------------------------------------------------------------


def test_overfitting_finding_comes_from_the_train_unit_result() -> None:
    cluster = running_gang()
    finding = {"verdict": "overfitting", "gap": 0.42, "bestEpoch": 6, "epochsAfterBest": 8,
               "rules": ["gap", "trend"],
               "evidence": ["val_loss rose for 4 epochs", "gap 42% > 10%"],
               "recommendations": ["add dropout"]}
    cluster.succeed_unit("train", train_result(overfitting=finding))
    decision = cluster.reconcile()
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
    cluster = running_gang()
    cluster.succeed_unit("train", train_result())
    decision = cluster.reconcile()
    assert decision.status.findings.overfitting is None
    assert all(c.type != "OverfittingDetected" for c in decision.status.conditions)


def test_live_progress_from_the_latest_epoch_event() -> None:
    cluster = running_gang()
    cluster.progress["train"] = {"event": "epoch", "epoch": 7, "epochs": 20,
                                 "train_loss": 0.3, "val_loss": 0.35, "val_accuracy": 0.9,
                                 "best_epoch": 6}
    decision = cluster.reconcile()
    training = decision.status.training
    assert training is not None
    assert training.epoch == 7
    assert training.epochs == 20
    assert training.best_epoch == 6
    assert training.metrics == {"train_loss": 0.3, "val_loss": 0.35, "val_accuracy": 0.9}
    assert decision.status.progress == "epoch 7/20"


def test_progress_ignores_events_that_are_not_epochs() -> None:
    cluster = running_gang()
    cluster.progress["train"] = {"event": "trial", "trial": 3}
    decision = cluster.reconcile()
    assert decision.status.training is None
    assert decision.status.progress is None


def test_ray_sweep_progress_comes_from_its_trial_events() -> None:
    cluster = Cluster(make_job(tuning=sweep(backend="ray", trials=8)))
    decision = cluster.reconcile()
    assert names(decision) == ["mnist-job", "mnist-tune"]  # one unit runs the whole sweep
    cluster.run()
    cluster.progress["tune"] = {
        "event": "trial", "counts": {"total": 8, "running": 2, "complete": 3},
        "best": {"trial": 2, "params": {"learningRate": 0.01}, "value": 0.2}}
    status = cluster.reconcile().status
    assert status.tuning is not None
    assert (status.tuning.trials.complete, status.tuning.trials.running) == (3, 2)
    assert status.tuning.best is not None and status.tuning.best.trial == 2
    assert status.progress == "3/8 trials"


# ----- tuning --------------------------------------------------------------------------------


def test_tuned_params_reach_the_training_pods_command() -> None:
    job = make_job(tuning=sweep())
    status = TrainingJobStatus(phase="Running", start_time="2025-03-01T11:00:00Z")
    status.stages["tuning"] = StageStatus(phase="Succeeded")
    status.stages["training"] = StageStatus()
    status.tuning = TuningStatus(best=BestTrial(trial=4, params={"learningRate": 0.02},
                                                value=0.1))
    job.status = status
    decision = Cluster(job).reconcile()
    assert names(decision, "Pod") == GANG
    for name in GANG:
        assert arg(created(decision, name), "--params") == '{"learningRate": 0.02}'


def sweep_cluster(**tuning: Any) -> Cluster:
    return Cluster(make_job(dataset={"builtin": "digits", "seed": 7}, tuning=sweep(**tuning)))


def test_a_sweep_creates_the_study_server_and_parallelism_trial_pods() -> None:
    cluster = sweep_cluster()
    decision = cluster.reconcile()
    assert names(decision) == ["mnist-job", "mnist-study", "mnist-study", "mnist-trial-0",
                               "mnist-trial-1"]
    assert [o["kind"] for o in decision.create] == ["ConfigMap", "Service", "Pod", "Pod", "Pod"]
    service = decision.create[1]
    assert service["spec"]["ports"][0]["port"] == 13000
    assert service["spec"]["selector"] == {"kubetrain.io/job": "mnist",
                                           "kubetrain.io/unit": "study"}
    server = decision.create[2]
    assert server["spec"]["restartPolicy"] == "Always"  # it replays its journal in place
    assert command(server)[:3] == ["python", "-m", "kubetrain.tuning.serve"]
    seeds = []
    for index in (0, 1):
        trial = created(decision, f"mnist-trial-{index}")
        assert trial["spec"]["restartPolicy"] == "Never"
        assert arg(trial, "--study-server") == "mnist-study:13000"
        assert arg(trial, "--study") == "mnist"
        seeds.append(arg(trial, "--sampler-seed"))
    assert seeds == [str(trial_seed(7, 0)), str(trial_seed(7, 1))]
    status = decision.status
    assert status.stages["tuning"].units["trial-0"].phase == "Running"
    assert status.tuning is not None and status.tuning.trials.total == 3
    assert status.progress == "0/3 trials"


def test_finished_trials_are_replaced_until_the_target_count_then_the_summary_runs() -> None:
    cluster = sweep_cluster()
    cluster.reconcile()
    cluster.run()
    cluster.tick(30)
    # Trial 0 completes, trial 1 fails on its own: one more trial starts, the sweep goes on.
    cluster.succeed("mnist-trial-0", trial_result(0))
    cluster.fail("mnist-trial-1", 1, message="RuntimeError: NaN loss")
    decision = cluster.reconcile()
    assert names(decision) == ["mnist-trial-2"]
    assert arg(created(decision, "mnist-trial-2"), "--sampler-seed") == str(trial_seed(7, 2))
    assert "TrialFailed" in reasons(decision)
    assert decision.delete == []  # finished trial pods are left for their logs
    cluster.run()
    status = cluster.reconcile().status
    assert status.tuning is not None
    counts = status.tuning.trials
    assert (counts.complete, counts.failed, counts.running) == (1, 1, 1)
    assert status.progress == "2/3 trials"
    assert status.tuning.best is not None and status.tuning.best.trial == 0
    # The last trial is pruned: the target count is reached, so the summary pod runs.
    cluster.succeed("mnist-trial-2", trial_result(2, "pruned"))
    decision = cluster.reconcile()
    assert names(decision) == ["mnist-tune-summary"]
    summary = created(decision, "mnist-tune-summary")
    assert command(summary)[:4] == ["python", "-m", "kubetrain.workloads.tune", "--summarize"]
    assert arg(summary, "--study-server") == "mnist-study:13000"
    status = decision.status
    assert status.tuning is not None
    counts = status.tuning.trials
    assert (counts.complete, counts.pruned, counts.failed) == (1, 1, 1)
    assert status.progress == "3/3 trials"
    # The summary succeeds: the study server is deleted and the training gang gets the best
    # trial's parameters.
    cluster.run()
    cluster.succeed("mnist-tune-summary", summary_result())
    decision = cluster.reconcile()
    status = decision.status
    assert status.stages["tuning"].phase == "Succeeded"
    assert status.tuning is not None and status.tuning.best is not None
    assert status.tuning.best.trial == 0 and status.tuning.study == "mnist"
    assert deleted(decision) == ["mnist-study"]
    assert names(decision, "Pod") == GANG
    assert arg(created(decision, "mnist-train-0"), "--params") == '{"learningRate": 0.01}'


def test_a_trial_whose_pod_vanished_is_replaced_by_a_new_trial() -> None:
    cluster = sweep_cluster()
    cluster.reconcile()
    cluster.run()
    cluster.tick(30)
    cluster.vanish("mnist-trial-1")
    decision = cluster.reconcile()
    assert names(decision) == ["mnist-trial-2"]
    lost = unit_status(cluster.job, "trial-1")
    assert (lost.phase, lost.replaced) == ("Failed", True)
    assert lost.message is not None and "a new trial replaces it" in lost.message
    status = decision.status
    assert status.tuning is not None
    # A replaced trial is not counted: the sweep still needs three trials to finish.
    counts = status.tuning.trials
    assert (counts.complete, counts.failed, counts.pruned) == (0, 0, 0)
    assert status.progress == "0/3 trials"
    cluster.run()
    for index in (0, 2):
        cluster.succeed(f"mnist-trial-{index}", trial_result(index))
    decision = cluster.reconcile()
    assert names(decision) == ["mnist-trial-3"]


def test_suspend_mid_sweep_deletes_the_study_and_trial_pods_and_resume_starts_new_trials(
) -> None:
    cluster = sweep_cluster()
    cluster.reconcile()
    cluster.run()
    cluster.succeed("mnist-trial-0", trial_result(0))
    cluster.reconcile()  # trial 0 counted, trial 2 created
    cluster.run()
    cluster.job.spec.run_policy.suspend = True
    decision = cluster.reconcile()
    assert deleted(decision) == ["mnist-study", "mnist-trial-1", "mnist-trial-2"]
    assert decision.status.phase == "Suspended"
    assert unit_status(cluster.job, "trial-1").replaced is True
    cluster.settle()
    cluster.job.spec.run_policy.suspend = False
    decision = cluster.reconcile()
    # The study server comes back (its Service is still there) and two new trials start.
    assert names(decision) == ["mnist-study", "mnist-trial-3", "mnist-trial-4"]
    assert cluster.attempt("mnist-study") == 1
    assert unit_status(cluster.job, "trial-0").phase == "Succeeded"


def test_a_deleted_study_service_is_created_again() -> None:
    cluster = sweep_cluster()
    cluster.reconcile()
    cluster.run()
    cluster.services.discard("mnist-study")
    decision = cluster.reconcile()
    assert ("Service", "mnist-study") in [(o["kind"], o["metadata"]["name"])
                                          for o in decision.create]


def test_trial_pods_carry_their_attempt_and_role_labels() -> None:
    cluster = sweep_cluster()
    decision = cluster.reconcile()
    labels = created(decision, "mnist-trial-0")["metadata"]["labels"]
    assert labels["kubetrain.io/unit"] == "trial-0"
    assert labels["kubetrain.io/stage"] == "tuning"
    assert labels["kubetrain.io/role"] == "trial"
    assert labels["kubetrain.io/attempt"] == "0"
