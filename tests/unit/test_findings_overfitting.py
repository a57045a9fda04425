"""The overfitting finding on hand-made metric histories."""

from __future__ import annotations

import math
from typing import Any

import pytest
from kubetrain.api.spec import TrainingJobSpec
from kubetrain.findings import analyze_overfitting, best_epoch, should_stop_for_overfitting

History = list[dict[str, float]]


def make_spec(
    training: dict[str, Any] | None = None,
    overfitting: dict[str, Any] | None = None,
    **sections: Any,
) -> TrainingJobSpec:
    """A digits/mlp spec with the given camelCase overrides."""
    body: dict[str, Any] = {
        "dataset": {"builtin": "digits"},
        "model": {"builtin": "mlp"},
        "training": training or {},
        "findings": {"overfitting": overfitting or {}},
    }
    body.update(sections)
    return TrainingJobSpec.model_validate(body)


def make_history(train: list[float], val: list[float], **extra: list[float]) -> History:
    assert len(train) == len(val)
    rows: History = []
    for i, (t, v) in enumerate(zip(train, val, strict=True)):
        row = {"epoch": float(i + 1), "train_loss": t, "val_loss": v}
        for key, values in extra.items():
            row[key] = values[i]
        rows.append(row)
    return rows


def converging(epochs: int = 20) -> History:
    """Train and validation both fall 15% per epoch with a 5% gap: a healthy run."""
    train = [1.0 * 0.85**i for i in range(epochs)]
    return make_history(train, [t * 1.05 for t in train])


def classic_overfit() -> History:
    """Train loss → 0; validation loss U-shaped with its minimum 0.3 at epoch 15."""
    train = [2.0 * 0.85 ** (e - 1) for e in range(1, 41)]
    val = [0.3 + 0.0008 * (e - 15) ** 2 for e in range(1, 41)]
    return make_history(train, val)


def trend_only() -> History:
    """Augmentation keeps train above val (negative gap) while val stalls and train improves."""
    train = [1.0, 0.9, 0.8, 0.7, 0.65, 0.6, 0.55, 0.5]
    val = [0.8, 0.6, 0.5, 0.45, 0.45, 0.452, 0.451, 0.453]
    return make_history(train, val)


# --- verdicts ---------------------------------------------------------------------------------


def test_clean_converging_run_is_none() -> None:
    finding = analyze_overfitting(converging(), make_spec())
    assert finding.verdict == "none"
    assert finding.rules == []
    assert finding.evidence == []
    assert finding.recommendations == []
    assert finding.best_epoch == 20
    assert finding.epochs_after_best == 0
    assert finding.gap == pytest.approx(0.05)


def test_classic_overfit() -> None:
    history = classic_overfit()
    finding = analyze_overfitting(history, make_spec())
    assert finding.verdict == "overfitting"
    assert finding.rules == ["gap", "trend", "diverging"]
    assert finding.best_epoch == 15
    assert finding.epochs_after_best == 25

    train_40 = 2.0 * 0.85**39
    expected_gap = (0.8 - train_40) / train_40
    assert finding.gap == pytest.approx(expected_gap, rel=1e-3)
    gap_sentence = finding.evidence[0]
    assert gap_sentence.startswith(f"val_loss 0.8 vs train_loss {train_40:.4g} at epoch 40: gap ")
    assert f"gap {expected_gap:.4g} > 0.1 for the last 3 epochs" in gap_sentence
    assert "epochs 38-40" in finding.evidence[1]
    assert "from its minimum 0.3 at epoch 15 to 0.8 at epoch 40" in finding.evidence[2]
    assert finding.evidence[3] == "best val_loss at epoch 15; 25 epochs trained after it"

    recs = " | ".join(finding.recommendations)
    assert "enable training.earlyStopping (patience 5) to keep the best epoch (epoch 15)" in recs
    assert "set training.dropout to 0.2 to 0.5" in recs
    assert "set training.weightDecay (e.g. 1e-4 to 1e-2)" in recs
    assert "augmentation.enabled" in recs
    assert "training.crossValidation.folds" in recs
    assert "model.params.hiddenUnits (now the mlp default)" in recs
    assert "training.labelSmoothing" in recs  # digits is a classification set


def test_single_noisy_spike_mid_run_does_not_fire() -> None:
    history = converging()
    history[9]["val_loss"] *= 3  # one bad evaluation at epoch 10
    finding = analyze_overfitting(history, make_spec())
    assert finding.verdict == "none"
    assert finding.rules == []


def test_single_spike_at_last_epoch_does_not_fire() -> None:
    # SageMaker's rules fire on one evaluation; here every rule needs `patience` in a row.
    history = converging()
    history[-1]["val_loss"] *= 3
    finding = analyze_overfitting(history, make_spec())
    assert finding.verdict == "none"
    assert finding.rules == []
    assert finding.gap is not None and finding.gap > 1  # the gap is reported, not acted on


def test_spike_held_for_patience_epochs_fires() -> None:
    history = converging()
    for row in history[-3:]:
        row["val_loss"] *= 3
    finding = analyze_overfitting(history, make_spec())
    assert finding.verdict == "overfitting"
    assert finding.rules == ["gap", "trend", "diverging"]
    assert finding.best_epoch == 17
    assert finding.epochs_after_best == 3


def test_warmup_epochs_are_ignored() -> None:
    # Validation far above training from the start: the gap holds on every epoch.
    train = [1.0, 0.8, 0.6, 0.5, 0.4]
    val = [2.0, 1.9, 1.8, 1.7, 1.6]
    history = make_history(train, val)
    assert analyze_overfitting(history, make_spec(overfitting={"warmupEpochs": 0})).rules == ["gap"]
    assert analyze_overfitting(history, make_spec(overfitting={"warmupEpochs": 2})).rules == ["gap"]
    # Three post-warmup evaluations are needed; epochs 4 and 5 are only two.
    finding = analyze_overfitting(history, make_spec(overfitting={"warmupEpochs": 3}))
    assert finding.verdict == "none"
    assert finding.rules == []


def test_gap_alone_is_suspected() -> None:
    train = [1.0, 0.8, 0.6, 0.5, 0.4]
    val = [2.0, 1.9, 1.8, 1.7, 1.6]
    finding = analyze_overfitting(make_history(train, val), make_spec())
    assert finding.verdict == "suspected"
    assert finding.rules == ["gap"]
    assert finding.gap == pytest.approx(3.0)


def test_trend_rule_alone_is_suspected() -> None:
    finding = analyze_overfitting(trend_only(), make_spec())
    assert finding.verdict == "suspected"
    assert finding.rules == ["trend"]
    assert finding.gap == pytest.approx((0.453 - 0.5) / 0.5)
    assert finding.evidence[0] == (
        "val_loss did not improve by more than 1% over epochs 6-8: best 0.451 vs 0.45 before "
        "(+0.2222%), while train_loss fell 23.08% (0.65 at epoch 5 -> 0.5 at epoch 8)"
    )
    assert finding.best_epoch == 4
    assert finding.epochs_after_best == 4
    assert finding.recommendations  # suspected runs get advice too


def test_trend_needs_training_loss_still_improving() -> None:
    history = trend_only()
    for row in history[-3:]:
        row["train_loss"] = 0.65  # training stalled too: a plateau, not overfitting
    finding = analyze_overfitting(history, make_spec())
    assert finding.verdict == "none"
    assert finding.rules == []


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_min_delta_is_relative(scale: float) -> None:
    # Validation improves 0.2% per epoch (0.6% over the 3-epoch window); training 10% per epoch.
    # The gap rule is switched off (huge threshold) to isolate the trend rule.
    train = [scale * 0.5 * 0.9**i for i in range(10)]
    val = [scale * 0.5 * 0.998**i for i in range(10)]
    history = make_history(train, val)

    strict = make_spec(overfitting={"minDelta": 0.01, "gapThreshold": 100})
    assert analyze_overfitting(history, strict).rules == ["trend"]
    assert analyze_overfitting(history, strict).verdict == "suspected"

    # 0.6% beats a 0.1% minDelta: the validation loss still counts as improving.
    lenient = make_spec(overfitting={"minDelta": 0.001, "gapThreshold": 100})
    assert analyze_overfitting(history, lenient).verdict == "none"


def test_min_delta_applies_to_training_improvement() -> None:
    # Validation flat; training improves only 0.5% over the window: below minDelta 1%.
    train = [1.0, 0.9, 0.8, 0.7, 0.7, 0.699, 0.698, 0.6965]
    val = [1.0, 0.9, 0.8, 0.75, 0.75, 0.75, 0.75, 0.75]
    history = make_history(train, val)
    assert analyze_overfitting(history, make_spec()).rules == []
    assert analyze_overfitting(history, make_spec(overfitting={"minDelta": 0.001})).rules == [
        "trend"
    ]


def test_nan_loss_is_non_finite() -> None:
    history = converging(10)
    for row in history[5:]:
        row["val_loss"] = math.nan
    history[7]["train_loss"] = math.inf
    spec = make_spec(training={"precision": "bf16", "learningRate": 0.01})
    finding = analyze_overfitting(history, spec)
    assert finding.verdict == "none"
    assert finding.rules == ["non-finite"]
    assert finding.evidence == ["non-finite loss first at epoch 6: val_loss nan"]
    assert finding.gap is None
    assert finding.best_epoch == 5
    assert finding.recommendations == [
        "lower training.learningRate (now 0.01) to 0.001 to avoid the non-finite loss",
        "set training.precision: fp32 (now bf16)",
    ]


def test_flat_training_loss_is_not_decreasing() -> None:
    flat = [0.693] * 8
    finding = analyze_overfitting(make_history(flat, flat), make_spec())
    assert finding.verdict == "none"
    assert finding.rules == ["not-decreasing"]
    assert finding.evidence == [
        "train_loss did not decrease by 1%: 0.693 at epoch 1 -> 0.693 at epoch 8"
    ]
    assert finding.recommendations[0] == (
        "change training.learningRate (now 0.001): try 0.01 if the loss is flat, "
        "0.0001 if it oscillates"
    )
    assert not any("dropout" in r for r in finding.recommendations)


def test_not_decreasing_waits_for_warmup_plus_patience() -> None:
    flat = [0.693] * 4  # warmup 2 + patience 3 = 5 epochs needed
    assert analyze_overfitting(make_history(flat, flat), make_spec()).rules == []
    flat5 = [0.693] * 5
    assert analyze_overfitting(make_history(flat5, flat5), make_spec()).rules == ["not-decreasing"]


def test_recommendations_omit_what_is_configured() -> None:
    spec = make_spec(
        training={
            "dropout": 0.3,
            "weightDecay": 1e-3,
            "labelSmoothing": 0.1,
            "earlyStopping": {"patience": 5},
            "crossValidation": {"folds": 5},
        },
        overfitting={"action": "stop"},
        augmentation={"enabled": True, "multiplier": 3},
        model={"builtin": "mlp", "params": {"hiddenUnits": [512, 256]}},
    )
    finding = analyze_overfitting(classic_overfit(), spec)
    assert finding.verdict == "overfitting"
    assert finding.recommendations == [
        "reduce model size: halve model.params.hiddenUnits (now [512, 256])"
    ]


def test_recommendations_name_restore_best_and_data_fraction() -> None:
    spec = make_spec(
        training={"earlyStopping": {"restoreBest": False}},
        dataset={"builtin": "diabetes", "fraction": 0.25},
    )
    recs = analyze_overfitting(classic_overfit(), spec).recommendations
    assert "set training.earlyStopping.restoreBest: true to keep the best epoch (epoch 15)" in recs
    assert "raise dataset.fraction (now 0.25) to 1 to train on all the data" in recs
    assert not any("earlyStopping (patience" in r for r in recs)
    assert not any("labelSmoothing" in r for r in recs)  # regression


def test_should_stop_only_with_action_stop_and_overfitting() -> None:
    overfit = classic_overfit()
    assert should_stop_for_overfitting(overfit, make_spec()) is False
    stop = make_spec(overfitting={"action": "stop"})
    assert should_stop_for_overfitting(overfit, stop) is True
    assert should_stop_for_overfitting(trend_only(), stop) is False  # only suspected
    assert should_stop_for_overfitting(converging(), stop) is False
    assert should_stop_for_overfitting([], stop) is False


def test_best_epoch_direction_ties_and_missing() -> None:
    history = make_history(
        [1.0, 0.8, 0.7, 0.6], [1.0, 0.5, 0.5, 0.6], val_accuracy=[0.5, 0.9, 0.95, 0.95]
    )
    assert best_epoch(history, "val_loss") == 2  # tie at 0.5: earliest wins
    assert best_epoch(history, "val_accuracy") == 3  # maximized
    assert best_epoch(history, "val_rmse") is None
    assert best_epoch([], "val_loss") is None


def test_best_epoch_follows_early_stopping_monitor() -> None:
    history = make_history(
        [1.0, 0.8, 0.7, 0.6], [1.0, 0.5, 0.55, 0.6], val_accuracy=[0.5, 0.8, 0.9, 0.85]
    )
    by_accuracy = make_spec(training={"earlyStopping": {"monitor": "val_accuracy"}})
    assert analyze_overfitting(history, by_accuracy).best_epoch == 3
    assert analyze_overfitting(history, make_spec()).best_epoch == 2
    # A monitor that was never logged falls back to val_loss rather than to no best epoch.
    no_accuracy = make_history([1.0, 0.8, 0.7, 0.6], [1.0, 0.5, 0.55, 0.6])
    assert analyze_overfitting(no_accuracy, by_accuracy).best_epoch == 2


def test_repeated_epoch_after_resume_keeps_the_later_row() -> None:
    history = converging(10)
    # A resumed run logs epoch 10 again; the later row describes the weights that survived.
    resumed = [*history, {"epoch": 10.0, "train_loss": 0.1, "val_loss": 0.2}]
    assert analyze_overfitting(resumed, make_spec()).gap == pytest.approx(1.0)
    # Rows out of order are sorted by epoch: the last epoch is still epoch 10.
    shuffled = [history[-1], *history[:-1]]
    assert analyze_overfitting(shuffled, make_spec()).gap == pytest.approx(0.05)


def test_empty_history() -> None:
    finding = analyze_overfitting([], make_spec())
    assert finding.verdict == "none"
    assert finding.best_epoch is None
    assert finding.gap is None
