"""The stage engine on scripted observations: every decision, with no process and no cluster."""

from __future__ import annotations

import json

import pytest
from engine_world import World, make_job, summary_result, sweep_spec, train_result, trial_result
from kubetrain.api import ManifestError, parse_training_job
from kubetrain.findings.cost import format_money
from kubetrain.pipeline.actions import Observation, Seen
from kubetrain.pipeline.engine import resumed
from kubetrain.pipeline.plan import plan, target_trials, trial_seed


def run_sweep_to_the_end(world: World) -> None:
    """Finish every running trial as complete until the summary runs."""
    for number in range(100):
        trials = [n for n in world.running() if n.startswith("trial-")]
        if not trials:
            break
        world.tick()
        world.finish(trials[0], trial_result(int(trials[0].split("-")[1])))
        world.step()
        del number


# ----- order, groups, results ---------------------------------------------------------------


def test_stages_run_in_order_and_the_job_succeeds_with_findings() -> None:
    world = World(make_job(augmentation={"enabled": True, "image": {"rotation": 5}},
                           explanation={"enabled": True}))
    world.step()
    assert world.status.phase == "Running"
    assert world.running() == ["augment-0"]
    world.tick()
    world.finish("augment-0")
    world.step()
    assert world.running() == ["augment-merge"]
    world.tick()
    world.finish("augment-merge", {"status": "succeeded", "kind": "image",
                                                 "added": 100})
    world.step()
    assert world.status.augmentation is not None and world.status.augmentation.added == 100
    assert world.running() == ["train"]
    world.tick(30)
    world.finish("train")
    world.step()
    assert world.running() == ["explain"]
    world.tick()
    world.finish("explain", {"status": "succeeded", "method": "gradient",
                                           "top_features": [{"feature": "pixel_3_4",
                                                             "mean_abs_shap": 0.2}]})
    step = world.step()
    status = world.status
    assert status.phase == "Succeeded"
    assert [s.phase for s in status.stages.values()] == ["Succeeded"] * 3
    assert status.training is not None and status.training.test_metrics["test_accuracy"] == 0.94
    assert status.findings.overfitting is not None and status.findings.overfitting.verdict == "none"
    assert status.findings.explanation is not None
    cost = status.findings.cost
    assert cost is not None and cost.total > 0 and set(cost.by_stage) == {
        "augmentation", "training", "explanation"}
    # the report unit writes report.md with the final status
    report = [launch for launch in step.launch if launch.unit.name == "report"]
    assert report and json.loads(report[0].status_file or "")["phase"] == "Succeeded"
    assert status.artifacts["report"] == "/s/report.md"
    assert status.artifacts["lossCurve"] == "/s/loss-curve.png"


def test_augmentation_shards_run_at_once_up_to_the_limit() -> None:
    world = World(make_job(augmentation={"enabled": True, "shards": 5, "parallelism": 3,
                                         "image": {"rotation": 5}}))
    world.step()
    assert world.running() == ["augment-0", "augment-1", "augment-2"]
    world.tick()
    world.finish("augment-1")
    world.step()
    assert world.running() == ["augment-0", "augment-2", "augment-3"]
    for name in ("augment-0", "augment-2", "augment-3"):
        world.finish(name)
    world.step()
    assert world.running() == ["augment-4"]
    world.finish("augment-4")
    world.step()
    assert world.running() == ["augment-merge"]


def test_cross_validation_folds_then_the_final_training() -> None:
    world = World(make_job(training={"epochs": 5, "crossValidation": {"folds": 2}}))
    world.step()
    assert world.running() == ["fold-0"]
    world.finish("fold-0", train_result(unit="fold-0", best_metrics={"val_accuracy": 0.9}))
    world.step()
    world.finish("fold-1", train_result(unit="fold-1", best_metrics={"val_accuracy": 0.8}))
    world.step()
    world.finish("train")
    world.step()
    cv = world.status.training.cross_validation  # type: ignore[union-attr]
    assert cv is not None and cv.folds == 2 and cv.mean == pytest.approx(0.85)


def test_live_progress_and_a_running_cost_while_training_runs() -> None:
    world = World(make_job())
    world.step()
    world.tick(600)
    world.units["train"] = world.units["train"].__class__(
        world.units["train"].state, 0, progress={"event": "epoch", "epoch": 3, "epochs": 10,
                                                 "train_loss": 0.5, "val_loss": 0.6})
    world.step()
    assert world.status.progress == "epoch 3/10"
    first = world.status.findings.cost.total  # type: ignore[union-attr]
    assert first > 0
    # the Cost column: money with its currency, never 2.7e-05
    assert world.status.cost == format_money(first, "USD")
    assert world.status.cost.endswith(" USD") and "e-" not in world.status.cost
    world.tick(600)
    world.step()
    assert world.status.findings.cost.total > first  # type: ignore[union-attr]


def test_a_unit_that_exits_zero_without_a_result_is_a_failure() -> None:
    world = World(make_job(runPolicy={"backoffLimit": 0}))
    world.step()
    world.finish("train", {})
    world.step()
    assert world.status.phase == "Failed"
    assert "without a readable result" in world.condition("Failed").message


# ----- failures, restarts, lost units -------------------------------------------------------


def test_a_failed_gang_restarts_from_its_checkpoint_as_a_new_attempt() -> None:
    world = World(make_job(training={"resources": {"nodes": 2}}, runPolicy={"backoffLimit": 2}))
    world.step()
    world.tick()
    world.fail("train", 137)
    step = world.step()
    assert [s.unit for s in step.stop] == ["train"]
    assert world.unit("train").restarts == 1 and world.unit("train").attempt == 1
    assert any(e.reason == "UnitRestart" for e in step.events)
    world.step()  # once the old gang is gone
    assert world.running() == ["train"] and world.launches[-1].attempt == 1


def test_restarts_exhausted_fail_the_job_with_the_unit_and_exit_code() -> None:
    world = World(make_job(runPolicy={"backoffLimit": 1}))
    world.step()
    world.fail("train", 3, output="ValueError: bad")
    world.step()
    world.step()
    world.fail("train", 3, output="ValueError: bad")
    world.step()
    assert world.status.phase == "Failed"
    failed = world.condition("Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert "train exited with code 3" in failed.message and "ValueError: bad" in failed.message


def test_old_attempts_are_stopped_and_never_counted() -> None:
    world = World(make_job(runPolicy={"backoffLimit": 2}))
    world.step()
    world.fail("train")
    world.step()
    # the old attempt's failed pod shows up again (not yet deleted): stop it, count nothing
    world.units["train"] = Observation(Seen.FAILED, 0, exit_code=1)
    step = world.step()
    assert [s.unit for s in step.stop] == ["train"] and world.unit("train").restarts == 1


def test_a_vanished_training_pod_is_started_again_without_counting_a_restart() -> None:
    world = World(make_job())
    world.step()
    world.tick(30)
    world.step()
    world.vanish("train")
    step = world.step()
    assert world.unit("train").attempt == 1 and world.unit("train").restarts == 0
    assert world.unit("train").prior_seconds == pytest.approx(30)
    assert any(e.reason == "UnitLost" for e in step.events)
    world.step()
    assert world.running() == ["train"]


def test_a_launch_whose_status_was_lost_is_adopted_not_launched_again() -> None:
    world = World(make_job())
    job = world.job
    world.step()
    world.job = job  # the operator died before writing the status: the pod exists anyway
    step = world.step()
    assert step.launch == [] and world.unit("train").phase == "Running"


# ----- tuning: trials as units --------------------------------------------------------------


def test_a_sweep_runs_trials_as_units_with_one_seed_formula_then_the_summary() -> None:
    world = World(make_job(tuning=sweep_spec()))
    world.step()
    assert world.running() == ["study", "trial-0", "trial-1"]
    seeds = {launch.unit.name: launch.unit.args[launch.unit.args.index("--sampler-seed") + 1]
             for launch in world.launches if launch.unit.name.startswith("trial")}
    assert seeds == {"trial-0": str(trial_seed(0, 0)), "trial-1": str(trial_seed(0, 1))}
    assert world.status.progress == "0/4 trials"
    run_sweep_to_the_end(world)
    assert world.running() == ["study", "tune-summary"]
    assert world.status.tuning.trials.complete == 4  # type: ignore[union-attr]
    world.finish("tune-summary", summary_result())
    world.step()
    assert "study" not in world.running()
    assert world.running() == ["train"]
    params = world.launches[-1].args
    assert params[0] == "--params" and json.loads(params[1]) == {"learningRate": 0.02}
    assert world.launched().count("trial-0") == 1


def test_each_trial_has_its_cost_and_pruning_savings_are_priced() -> None:
    world = World(make_job(tuning=sweep_spec(trials=2, parallelism=2)))
    world.step()
    world.tick(60)
    world.finish("trial-0", trial_result(0))
    world.finish("trial-1", trial_result(1, state="pruned", epochs_run=1))
    world.step()
    world.finish("tune-summary", summary_result(epochs_run=4, epochs_saved_by_pruning=2))
    world.step()
    assert world.unit("trial-0").cost > 0 and world.unit("trial-1").cost > 0
    cost = world.status.findings.cost
    trials = world.unit("trial-0").cost + world.unit("trial-1").cost
    assert cost.saved_by_pruning == pytest.approx(trials / 4 * 2, abs=1e-6)  # type: ignore[union-attr]


def test_a_cost_aware_sweep_trains_the_selected_trial_and_files_the_front() -> None:
    world = World(make_job(tuning=sweep_spec(
        trials=2, parallelism=2, sampler="nsga2", pruner="none",
        objectives=[{"name": "val_accuracy"}, {"name": "cost"}],
        selection={"cheapestWithin": 0.01})))
    world.step()
    world.tick(60)
    # Live, before the summary: the best is the best accuracy (maximized), not the lowest.
    world.finish("trial-0", trial_result(0, value=0.98, values={"val_accuracy": 0.98,
                                                                "cost": 4e-6}))
    world.finish("trial-1", trial_result(1, value=0.975, values={"val_accuracy": 0.975,
                                                                 "cost": 1e-6}))
    world.step()
    tuning = world.status.tuning
    assert tuning is not None and tuning.best is not None and tuning.best.trial == 0
    assert tuning.objectives == ["val_accuracy", "cost"]
    front = [{"trial": n, "params": {"learningRate": 0.01 * (n + 1)},
              "values": {"val_accuracy": v, "cost": c}, "cost": c, "train_seconds": 1.0}
             for n, v, c in ((0, 0.98, 4e-6), (1, 0.975, 1e-6))]
    selection = {"rule": "cheapestWithin 0.01", "metric": "val_accuracy", "trial": 1,
                 "value": 0.975, "cost": 1e-6, "best_metric_trial": 0,
                 "best_metric_value": 0.98, "best_metric_cost": 4e-6, "metric_lost": 0.005,
                 "saved": 3e-6, "saved_fraction": 0.75}
    world.finish("tune-summary", summary_result(
        objectives=["val_accuracy", "cost"], pareto_front=front, selection=selection,
        best={"trial": 1, "params": {"learningRate": 0.02}, "value": 0.975}))
    world.step()
    # The selected trial's parameters train the final model; status holds the front, the
    # selection with its saving, and what the trials cost together.
    assert json.loads(world.launches[-1].args[1]) == {"learningRate": 0.02}
    tuning = world.status.tuning
    assert tuning is not None and tuning.best is not None and tuning.best.trial == 1
    assert [p.trial for p in tuning.pareto_front] == [0, 1]
    assert tuning.pareto_front[1].values == {"val_accuracy": 0.975, "cost": 1e-6}
    assert tuning.selection is not None and tuning.selection.saved_fraction == 0.75
    trials_cost = world.unit("trial-0").cost + world.unit("trial-1").cost
    assert tuning.trials_cost == pytest.approx(trials_cost) and trials_cost > 0


def test_a_grid_sweep_is_capped_at_the_grid_size() -> None:
    spec = sweep_spec(sampler="grid", trials=20, parallelism=2,
                      searchSpace={"dropout": {"type": "float", "low": 0.1, "high": 0.3,
                                               "step": 0.1}})
    job = make_job(tuning=spec)
    assert target_trials(job.spec) == 3
    world = World(job)
    world.step()
    run_sweep_to_the_end(world)
    assert sorted(n for n in world.launched() if n.startswith("trial")) == [
        "trial-0", "trial-1", "trial-2"]
    assert world.status.progress == "3/3 trials"


def test_a_lost_trial_is_replaced_and_the_sweep_reaches_its_count() -> None:
    world = World(make_job(tuning=sweep_spec()))
    world.step()
    world.vanish("trial-0")
    world.step()
    assert world.unit("trial-0").replaced is True
    assert world.running() == ["study", "trial-1", "trial-2"]
    run_sweep_to_the_end(world)
    counted = [n for n, u in world.status.stages["tuning"].units.items()
               if n.startswith("trial") and not u.replaced]
    assert len(counted) == 4 and world.running() == ["study", "tune-summary"]


def test_a_trial_that_fails_on_its_own_counts_as_failed() -> None:
    world = World(make_job(tuning=sweep_spec(trials=2)))
    world.step()
    world.fail("trial-0", result=trial_result(0, state="failed", error="nan"))
    world.step()
    assert world.unit("trial-0").replaced is False
    assert world.status.tuning.trials.failed == 1  # type: ignore[union-attr]
    assert world.running() == ["study", "trial-1"]


def test_suspend_mid_sweep_then_resume_reaches_the_count_and_runs_no_trial_twice() -> None:
    world = World(make_job(tuning=sweep_spec()))
    world.step()
    world.finish("trial-0", trial_result(0))
    world.step()  # trial-2 starts
    world.job.spec.run_policy.suspend = True
    step = world.step()
    assert world.status.phase == "Suspended"
    assert {s.unit for s in step.stop} == {"study", "trial-1", "trial-2"}
    assert world.running() == []
    assert world.unit("trial-0").phase == "Succeeded"  # a finished trial is kept
    assert world.unit("trial-1").replaced and world.unit("trial-2").replaced
    world.step()
    assert world.launched().count("study") == 1  # nothing starts while suspended
    world.job.spec.run_policy.suspend = False
    world.step()
    assert world.status.phase == "Running" and world.condition("Suspended").status == "False"
    assert world.running() == ["study", "trial-3", "trial-4"]
    run_sweep_to_the_end(world)
    launched = [n for n in world.launched() if n.startswith("trial")]
    assert len(launched) == len(set(launched))  # no trial unit ran twice
    assert world.status.tuning.trials.complete == 4  # type: ignore[union-attr]
    assert world.running() == ["study", "tune-summary"]


def test_suspended_training_resumes_from_its_checkpoint() -> None:
    world = World(make_job())
    world.step()
    world.job.spec.run_policy.suspend = True
    world.step()
    assert world.unit("train").phase == "Pending" and world.unit("train").attempt == 1
    world.job.spec.run_policy.suspend = False
    world.step()
    assert world.running() == ["train"] and world.launches[-1].attempt == 1


# ----- budget, deadline, interrupt, ttl -----------------------------------------------------


def test_budget_stop_stops_running_work_fills_the_cost_and_fails_the_job() -> None:
    world = World(make_job(findings={"cost": {"budget": {"maxCost": 1e-7,
                                                         "action": "stop"}}}))
    world.step()
    assert world.running() == ["train"]
    world.tick(5)
    step = world.step()
    assert [(s.unit, s.grace_seconds) for s in step.stop] == [("train", 5)]
    status = world.status
    assert status.phase == "Failed" and world.condition("BudgetExceeded").status == "True"
    assert world.condition("Failed").reason == "BudgetExceeded"
    assert status.findings.cost is not None and status.findings.cost.total > 0
    assert status.findings.cost.budget.exceeded  # type: ignore[union-attr]
    assert [launch.unit.name for launch in step.launch] == ["report"]


def test_budget_warn_only_sets_the_condition() -> None:
    world = World(make_job(findings={"cost": {"budget": {"maxCost": 1e-7,
                                                         "action": "warn"}}}))
    world.step()
    world.tick(5)
    step = world.step()
    assert world.status.phase == "Running" and world.condition("BudgetExceeded") is not None
    assert step.stop == [] and sum(e.reason == "BudgetExceeded" for e in step.events) == 1
    world.tick(5)
    assert not any(e.reason == "BudgetExceeded" for e in world.step().events)  # said once


def test_deadline_and_interrupt_stop_everything_and_fail() -> None:
    world = World(make_job(runPolicy={"activeDeadlineSeconds": 60}))
    world.step()
    world.tick(61)
    step = world.step()
    assert world.condition("Failed").reason == "DeadlineExceeded" and step.stop
    world = World(make_job())
    world.step()
    step = world.step(interrupted=True)
    assert world.condition("Failed").reason == "Interrupted"
    assert [s.unit for s in step.stop] == ["train"]
    assert world.unit("train").phase == "Failed"


def test_problems_the_executor_found_make_the_job_invalid_and_launch_nothing() -> None:
    world = World(make_job())
    step = world.step(problems=("spec.storage.pvc: required",))
    assert world.status.phase == "Failed" and step.launch == []
    assert world.condition("Invalid").message == "spec.storage.pvc: required"


def test_ttl_expires_only_after_it_passed() -> None:
    world = World(make_job(runPolicy={"ttlSecondsAfterFinished": 60}))
    world.step()
    world.finish("train")
    world.step()
    world.tick(30)
    assert not world.step().expired
    world.tick(31)
    assert world.step().expired


def test_a_resumed_local_run_keeps_finished_units_and_restarts_the_rest() -> None:
    world = World(make_job(tuning=sweep_spec(trials=2)))
    world.step()
    world.finish("trial-0", trial_result(0))
    world.step()
    world.step(interrupted=True)
    status = resumed(world.status)
    assert status.phase == "Running"
    units = status.stages["tuning"].units
    assert units["trial-0"].phase == "Succeeded" and units["trial-1"].replaced
    assert units["study"].phase == "Pending"


# ----- the spec's cross-field rules ---------------------------------------------------------


def _manifest(**spec: object) -> dict[str, object]:
    return {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "x"},
            "spec": {"dataset": {"builtin": "digits"}, "model": {"builtin": "mlp"}, **spec}}


def test_parallelism_above_trials_is_refused_when_both_are_set_and_capped_otherwise() -> None:
    with pytest.raises(ManifestError) as error:
        parse_training_job(_manifest(tuning=sweep_spec(trials=2, parallelism=4)))
    assert "spec.tuning.parallelism" in str(error.value) and "tuning.trials" in str(error.value)
    job = parse_training_job(_manifest(tuning={k: v for k, v in sweep_spec(trials=1).items()
                                               if k != "parallelism"}))
    sweep = plan(job.spec).stage("tuning").groups[0].sweep  # type: ignore[union-attr]
    assert sweep is not None and sweep.parallelism == 1


def test_a_custom_command_trains_through_the_program_runner_in_its_image() -> None:
    job = parse_training_job({**_manifest(), "spec": {
        "dataset": {"builtin": "digits"}, "tuning": sweep_spec(),
        "training": {"command": ["python", "train.py"], "image": "me/trainer:1"}}})
    planned = plan(job.spec)
    train = planned.unit("train")
    assert train is not None and train.module == "kubetrain.workloads.script"
    assert train.image == "me/trainer:1"
    sweep = planned.stage("tuning").groups[0].sweep  # type: ignore[union-attr]
    # A trial runs the trial unit (study, pruning) in the program's image; it starts the
    # program through the same runner.
    assert sweep is not None and sweep.template.image == "me/trainer:1"
    # The other stages run kubetrain's own units in the worker image.
    assert planned.unit("tune-summary").image is None  # type: ignore[union-attr]


def test_unavailable_data_fails_the_job_with_its_own_reason_and_no_retry() -> None:
    world = World(make_job(dataset={"uri": "s3://bucket/data.npz"},
                           runPolicy={"backoffLimit": 3}))
    step = world.step()
    assert [launch.unit.name for launch in step.launch] == ["fetch"]
    message = "spec.dataset.uri: s3://bucket/data.npz does not exist (no such bucket or object)"
    world.fail("fetch", 1, result={"status": "failed", "unavailable": message})
    world.step()
    assert world.status.phase == "Failed"
    assert world.condition("Failed").reason == "DataUnavailable"
    assert world.condition("Failed").message == message
    assert world.unit("fetch").restarts == 0


def test_a_spec_problem_a_unit_found_in_the_data_makes_the_job_invalid_without_retries() -> None:
    world = World(make_job(runPolicy={"backoffLimit": 3}))
    world.step()
    problem = "spec.dataset.target: column 'label' not in data.csv; columns: a, b"
    world.fail("train", 2, result={"status": "failed", "problems": [problem]})
    step = world.step()
    assert world.status.phase == "Failed"
    assert world.condition("Invalid").message == problem
    assert world.condition("Failed").reason == "InvalidSpec"
    assert world.unit("train").restarts == 0
    assert world.status.stages["training"].phase == "Failed"
    assert [launch.unit.name for launch in step.launch] == ["report"]


def test_a_trial_that_finds_the_data_refuses_the_spec_makes_the_job_invalid() -> None:
    world = World(make_job(tuning=sweep_spec()))
    world.step()
    problem = "spec.dataset.uri: data.csv not found"
    world.fail("trial-0", 2, result=trial_result(0, state="failed", problems=[problem]))
    world.step()
    assert world.condition("Invalid").message == problem
    assert world.running() == ["report"]  # every trial and the study server stopped


# ----- tracking ----------------------------------------------------------------------------


def test_a_unit_that_could_not_track_warns_and_the_job_still_succeeds() -> None:
    world = World(make_job())
    world.step()
    world.tick()
    warning = "mlflow: finishing the run failed, tracking switched off for this unit: refused"
    world.finish("train", train_result(tracking_warnings=[warning]))
    step = world.step()
    condition = world.condition("TrackingDegraded")
    assert condition is not None and condition.status == "True"
    assert condition.reason == "TrackingUnavailable"
    assert condition.message == f"train: {warning}"
    assert [(e.type, e.reason) for e in step.events if "mlflow" in e.message] == [
        ("Warning", "TrackingUnavailable")]
    world.tick()
    world.finish("report")
    world.step()
    assert world.status.phase == "Succeeded"


def test_a_tracked_unit_sets_no_tracking_condition() -> None:
    world = World(make_job())
    world.step()
    world.tick()
    world.finish("train")
    world.step()
    assert world.condition("TrackingDegraded") is None
