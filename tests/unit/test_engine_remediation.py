"""The stage engine's remediation loop on scripted observations: no process, no cluster."""

from __future__ import annotations

import json
from typing import Any

from engine_world import World, make_job, summary_result, sweep_spec, train_result
from kubetrain.pipeline.engine import resumed

REMEDIATE = {"overfitting": {"action": "remediate", "remediation": {"maxAttempts": 3}}}


def overfit_result(unit: str, verdict: str, val: float, test: float,
                   **extra: Any) -> dict[str, Any]:
    return train_result(unit=unit, overfitting={"verdict": verdict},
                        final_metrics={"val_accuracy": val, "val_loss": 1 - val},
                        best_metrics={"val_accuracy": val, "val_loss": 1 - val},
                        test_metrics={"test_accuracy": test},
                        model=f"/s/{unit}/model.pt", **extra)


def changes(world: World, unit: str) -> list[dict[str, Any]]:
    launch = [la for la in world.launches if la.unit.name == unit][-1]
    args = list(launch.args)
    return list(json.loads(args[args.index("--remediation") + 1]))


def test_an_overfitting_training_is_retrained_and_the_best_attempt_delivered() -> None:
    world = World(make_job(findings=REMEDIATE, explanation={"enabled": True}))
    world.step()
    world.tick(30)
    world.finish("train", overfit_result("train", "overfitting", 0.80, 0.78))
    world.step()
    assert world.running() == ["remediate-1"]
    assert [c["field"] for c in changes(world, "remediate-1")] == [
        "training.earlyStopping", "training.weightDecay", "training.dropout"]
    world.tick(20)
    world.finish("remediate-1", overfit_result("remediate-1", "suspected", 0.86, 0.85))
    world.step()
    # suspected is not in remediation.on (the default): attempt 1 is not overfitting, done
    assert world.running() == ["explain"]
    explain = [la for la in world.launches if la.unit.name == "explain"][-1]
    assert explain.args[-2:] == ("--model", "/s/remediate-1/model.pt")
    world.tick()
    world.finish("explain", {"status": "succeeded", "method": "gradient"})
    world.step()
    status = world.status
    assert status.phase == "Succeeded"
    finding = status.findings.overfitting
    assert finding is not None and finding.verdict == "overfitting"
    remediation = finding.remediation
    assert remediation is not None and remediation.done and remediation.chosen == 1
    assert [a.verdict for a in remediation.attempts] == ["overfitting", "suspected"]
    assert remediation.test_gain is not None and round(remediation.test_gain, 4) == 0.07
    assert remediation.attempts[1].cost and remediation.cost == remediation.attempts[1].cost
    assert "not overfitting" in remediation.message
    assert status.artifacts["model"] == "/s/remediate-1/model.pt"
    assert status.artifacts["originalModel"] == "/s/train/model.pt"
    assert status.best == "test_accuracy=0.85"


def test_a_worse_attempt_keeps_the_original_and_augmentation_runs_before_its_attempt() -> None:
    world = World(make_job(findings=REMEDIATE))
    world.step()
    world.finish("train", overfit_result("train", "overfitting", 0.85, 0.84))
    world.step()
    world.tick()
    world.finish("remediate-1", overfit_result("remediate-1", "overfitting", 0.80, 0.90))
    world.step()
    assert world.running() == ["remediate-2-augment"]  # digits: image augmentation first
    augment = [la for la in world.launches if la.unit.name == "remediate-2-augment"][-1]
    assert "--whole" in augment.unit.args and "--params" not in augment.args
    assert [c["field"] for c in changes(world, "remediate-2-augment")] == ["augmentation"]
    world.tick()
    world.finish("remediate-2-augment", {"status": "succeeded", "kind": "image", "added": 9})
    world.step()
    assert world.running() == ["remediate-2"]
    # it starts from the original (the best so far), not from attempt 1
    assert [c["field"] for c in changes(world, "remediate-2")] == ["augmentation"]
    world.finish("remediate-2", overfit_result("remediate-2", "overfitting", 0.84, 0.95))
    world.step()
    assert world.running() == ["remediate-3"]
    world.finish("remediate-3", overfit_result("remediate-3", "overfitting", 0.83, 0.99))
    world.step()
    status = world.status
    assert status.phase == "Succeeded"
    remediation = status.findings.overfitting.remediation  # type: ignore[union-attr]
    assert remediation is not None
    # the test split never chooses: attempt 3 has the best test accuracy, the original the
    # best validation accuracy
    assert remediation.chosen == 0 and remediation.test_gain == 0.0
    assert "maxAttempts (3) reached" in remediation.message
    assert status.artifacts["model"] == "/s/train/model.pt"
    assert "originalModel" not in status.artifacts


def test_no_attempt_when_the_training_does_not_overfit() -> None:
    world = World(make_job(findings=REMEDIATE))
    world.step()
    world.finish("train", overfit_result("train", "none", 0.95, 0.94))
    world.step()
    assert world.status.phase == "Succeeded"
    remediation = world.status.findings.overfitting.remediation  # type: ignore[union-attr]
    assert remediation is not None and len(remediation.attempts) == 1 and remediation.done
    assert not [la for la in world.launches if la.unit.name.startswith("remediate")]


def test_a_failed_attempt_ends_remediation_but_not_the_job() -> None:
    world = World(make_job(findings=REMEDIATE, runPolicy={"backoffLimit": 0}))
    world.step()
    world.finish("train", overfit_result("train", "overfitting", 0.85, 0.84))
    world.step()
    world.fail("remediate-1")
    world.step()
    status = world.status
    assert status.phase == "Succeeded"
    remediation = status.findings.overfitting.remediation  # type: ignore[union-attr]
    assert remediation is not None and remediation.attempts[1].phase == "Failed"
    assert remediation.chosen == 0 and "failed" in remediation.message


def test_remediation_starts_from_the_best_trial_of_the_sweep() -> None:
    world = World(make_job(findings=REMEDIATE, tuning=sweep_spec(trials=1, parallelism=1)))
    world.step()
    world.finish("trial-0")
    world.step()
    world.finish("tune-summary", summary_result())
    world.step()
    world.finish("train", overfit_result("train", "overfitting", 0.85, 0.84))
    world.step()
    launch = [la for la in world.launches if la.unit.name == "remediate-1"][-1]
    args = list(launch.args)
    assert json.loads(args[args.index("--params") + 1]) == {"learningRate": 0.02}


def test_an_operator_restart_mid_remediation_decides_the_same_and_launches_nothing_twice() -> None:
    world = World(make_job(findings=REMEDIATE))
    world.step()
    world.finish("train", overfit_result("train", "overfitting", 0.85, 0.84))
    world.step()
    first = changes(world, "remediate-1")
    # the status written before the launch was lost: the running unit is adopted, not relaunched
    before = world.job.status.model_copy(deep=True)  # type: ignore[union-attr]
    del before.stages["training"].units["remediate-1"]
    world.job = world.job.model_copy(update={"status": before})
    world.step()
    assert [la.unit.name for la in world.launches].count("remediate-1") == 1
    world.finish("remediate-1", overfit_result("remediate-1", "overfitting", 0.86, 0.85))
    world.step()
    second = changes(world, "remediate-2-augment")
    assert [c["field"] for c in second] == [c["field"] for c in first] + ["augmentation"]
    # a `kubetrain run --resume` of a run stopped mid-attempt launches it again, the same
    world.units.clear()
    world.job = world.job.model_copy(update={"status": resumed(world.status)})
    world.step()
    assert [la.unit.name for la in world.launches].count("remediate-2-augment") == 2
    assert changes(world, "remediate-2-augment") == second
    assert changes(world, "remediate-1") == first
