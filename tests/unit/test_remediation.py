"""The remediation chooser: which regularization the next attempt tries, which attempt wins."""

from __future__ import annotations

from typing import Any

import pytest
from engine_world import make_job
from kubetrain.api import ManifestError, parse_training_job
from kubetrain.api.results import TrainingResult
from kubetrain.api.spec import RemediationSpec, TrainingJobSpec
from kubetrain.findings.remediation import (
    Done,
    NextAttempt,
    Outcome,
    apply_changes,
    best_attempt,
    changes_from_json,
    data_kind,
    delivered_validation,
    gain_over_original,
    next_attempt,
)

SETTINGS = RemediationSpec(max_attempts=3)


def spec(**body: Any) -> TrainingJobSpec:
    return make_job(**body).spec


def val(accuracy: float, loss: float = 0.5) -> dict[str, float]:
    return {"val_accuracy": accuracy, "val_loss": loss}


def decide(s: TrainingJobSpec, *outcomes: Outcome,
           settings: RemediationSpec = SETTINGS) -> NextAttempt | Done:
    return next_attempt(s, outcomes, settings, "classification")


def test_the_first_attempt_adds_early_stopping_weight_decay_and_dropout() -> None:
    s = spec()
    first = decide(s, Outcome((), "overfitting", val(0.8)))
    assert isinstance(first, NextAttempt)
    assert first.added == ("training.earlyStopping", "training.weightDecay", "training.dropout")
    assert first.started_from == 0 and first.group == "regularize"
    changed = apply_changes(s, first.changes)
    assert changed.training.weight_decay == 0.05 and changed.training.dropout == 0.3
    es = changed.training.early_stopping
    assert es is not None and es.enabled and es.restore_best
    assert [c.before for c in first.changes] == [None, 0.0, 0.0]


def test_a_job_that_is_not_overfitting_gets_no_attempt() -> None:
    result = decide(spec(), Outcome((), "none", val(0.9)))
    assert isinstance(result, Done) and "not overfitting" in result.message


def test_suspected_starts_remediation_only_when_the_spec_says_so() -> None:
    assert isinstance(decide(spec(), Outcome((), "suspected", val(0.9))), Done)
    both = RemediationSpec(on=["overfitting", "suspected"])
    assert isinstance(decide(spec(), Outcome((), "suspected", val(0.9)), settings=both),
                      NextAttempt)


def test_the_next_attempt_builds_on_the_best_one_and_adds_augmentation() -> None:
    s = spec()
    first = decide(s, Outcome((), "overfitting", val(0.80)))
    assert isinstance(first, NextAttempt)
    second = decide(s, Outcome((), "overfitting", val(0.80)),
                    Outcome(first.changes, "overfitting", val(0.85)))
    assert isinstance(second, NextAttempt)
    assert second.started_from == 1 and second.added == ("augmentation",)
    assert [c.field for c in second.changes][:3] == list(first.added)
    changed = apply_changes(s, second.changes)
    assert changed.augmentation.enabled and changed.augmentation.image is not None


def test_a_worse_attempt_is_not_carried_into_the_next_one() -> None:
    s = spec()
    first = decide(s, Outcome((), "overfitting", val(0.85)))
    assert isinstance(first, NextAttempt)
    second = decide(s, Outcome((), "overfitting", val(0.85)),
                    Outcome(first.changes, "overfitting", val(0.80)))
    assert isinstance(second, NextAttempt)
    assert second.started_from == 0 and second.added == ("augmentation",)
    assert [c.field for c in second.changes] == ["augmentation"]


def test_tabular_data_gets_noise_and_the_model_shrinks_after_that() -> None:
    s = spec(dataset={"builtin": "wine"}, model={"builtin": "mlp",
                                                  "params": {"hiddenUnits": [256, 256]}})
    outcomes = [Outcome((), "overfitting", val(0.80))]
    groups = []
    for accuracy in (0.81, 0.82, 0.83):
        decision = decide(s, *outcomes)
        assert isinstance(decision, NextAttempt)
        groups.append(decision.group)
        outcomes.append(Outcome(decision.changes, "overfitting", val(accuracy)))
    assert groups == ["regularize", "augment", "shrink"]
    changed = apply_changes(s, outcomes[-1].changes)
    assert changed.augmentation.tabular is not None and changed.augmentation.tabular.noise == 0.1
    assert changed.model is not None and changed.model.params["hiddenUnits"] == [128, 128]
    assert changed.training.label_smoothing == 0.1
    assert isinstance(decide(s, *outcomes), Done)  # maxAttempts (3) reached


def test_levers_already_set_are_skipped_and_strengthened_at_the_end() -> None:
    s = spec(training={"epochs": 10, "weightDecay": 0.01, "dropout": 0.2,
                       "labelSmoothing": 0.1,
                       "earlyStopping": {"patience": 6, "restoreBest": True}},
             augmentation={"enabled": True, "image": {}},
             model={"builtin": "mlp", "params": {"hiddenUnits": 8}})
    decision = decide(s, Outcome((), "overfitting", val(0.8)))
    assert isinstance(decision, NextAttempt) and decision.group == "strengthen"
    changed = apply_changes(s, decision.changes)
    assert changed.training.weight_decay == pytest.approx(0.04)
    assert changed.training.dropout == pytest.approx(0.4)
    assert changed.training.early_stopping is not None
    assert changed.training.early_stopping.patience == 3


def test_unknown_kind_of_data_gets_no_augmentation() -> None:
    s = spec(dataset={"uri": "data.npz"})
    assert data_kind(s) is None
    first = decide(s, Outcome((), "overfitting", val(0.8)))
    assert isinstance(first, NextAttempt)
    second = decide(s, Outcome((), "overfitting", val(0.8)),
                    Outcome(first.changes, "overfitting", val(0.9)))
    assert isinstance(second, NextAttempt) and second.group == "shrink"


def test_a_failed_attempt_ends_remediation() -> None:
    s = spec()
    first = decide(s, Outcome((), "overfitting", val(0.8)))
    assert isinstance(first, NextAttempt)
    done = decide(s, Outcome((), "overfitting", val(0.8)), Outcome(first.changes, None, None))
    assert isinstance(done, Done) and "failed" in done.message


def test_the_best_attempt_is_chosen_on_validation_and_ties_keep_the_earlier_one() -> None:
    outcomes = [Outcome((), "overfitting", val(0.80, 0.9)),
                Outcome((), "none", val(0.86, 0.4)),
                Outcome((), "none", val(0.86, 0.5)),
                Outcome((), None, None)]
    assert best_attempt(outcomes, "val_accuracy") == 1
    assert best_attempt([*outcomes[:1], Outcome((), "none", val(0.80, 0.9))],
                        "val_accuracy") == 0
    rmse = [Outcome((), "overfitting", {"val_rmse": 50.0}),
            Outcome((), "none", {"val_rmse": 45.0})]
    assert best_attempt(rmse, "val_rmse") == 1


def test_the_delivered_model_is_judged_on_its_kept_epoch() -> None:
    result = TrainingResult(best_metrics={"val_accuracy": 0.9, "val_loss": 0.3},
                            final_metrics={"val_accuracy": 0.8, "val_loss": 0.9,
                                           "train_loss": 0.01},
                            restored_best=False)
    assert delivered_validation(result) == {"val_accuracy": 0.8, "val_loss": 0.9}
    restored = result.model_copy(update={"restored_best": True})
    assert delivered_validation(restored) == {"val_accuracy": 0.9, "val_loss": 0.3}


def test_gain_is_positive_when_better_for_accuracy_and_rmse() -> None:
    assert gain_over_original({"test_accuracy": 0.8}, {"test_accuracy": 0.85},
                              "classification") == pytest.approx(0.05)
    assert gain_over_original({"test_rmse": 50.0}, {"test_rmse": 45.0},
                              "regression") == pytest.approx(5.0)
    assert gain_over_original({}, {"test_accuracy": 0.85}, "classification") is None


def test_changes_travel_as_json_and_keep_the_first_before() -> None:
    s = spec()
    first = decide(s, Outcome((), "overfitting", val(0.8)))
    assert isinstance(first, NextAttempt)
    fourth = decide(s, Outcome((), "overfitting", val(0.8)),
                    Outcome(first.changes, "overfitting", val(0.9)),
                    Outcome(first.changes, "overfitting", val(0.7)),
                    Outcome(first.changes, "overfitting", val(0.7)),
                    settings=RemediationSpec(max_attempts=5))
    assert isinstance(fourth, NextAttempt) and fourth.group == "strengthen"
    dropout = next(c for c in fourth.changes if c.field == "training.dropout")
    assert (dropout.before, dropout.after) == (0.0, 0.5)
    text = "[" + ",".join(c.model_dump_json() for c in fourth.changes) + "]"
    assert changes_from_json(text) == list(fourth.changes)


def _manifest(**spec_body: Any) -> dict[str, Any]:
    body = {"dataset": {"builtin": "digits"}, "model": {"builtin": "mlp"}, **spec_body}
    return {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "x"}, "spec": body}


@pytest.mark.parametrize(("overfitting", "extra", "field"), [
    ({"action": "remediate", "remediation": {"maxAttempts": 0}}, {},
     "spec.findings.overfitting.remediation.maxAttempts"),
    ({"action": "remediate", "remediation": {"maxAttempts": 11}}, {},
     "spec.findings.overfitting.remediation.maxAttempts"),
    ({"action": "remediate", "remediation": {"on": ["none"]}}, {},
     "spec.findings.overfitting.remediation.on"),
    ({"action": "stop", "remediation": {"maxAttempts": 2}}, {},
     "spec.findings.overfitting.remediation"),
    ({"action": "remediate"}, {"model": None, "training": {"command": ["python", "t.py"]}},
     "spec.findings.overfitting.action"),
])
def test_bad_remediation_settings_name_the_field(overfitting: dict[str, Any],
                                                 extra: dict[str, Any], field: str) -> None:
    manifest = _manifest(findings={"overfitting": overfitting}, **extra)
    if extra.get("model", "") is None:
        del manifest["spec"]["model"]
    with pytest.raises(ManifestError) as error:
        parse_training_job(manifest)
    assert field in str(error.value)
