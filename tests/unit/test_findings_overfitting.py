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
    # Trend, measured from the best validation loss (0.3 at epoch 15, 25 epochs before the end):
    # val 0.3 -> 0.8 is +166.7%; train 2*0.85^14 -> 2*0.85^39 fell by 1 - 0.85^25.
    train_15 = 2.0 * 0.85**14
    train_fell = (1 - 0.85**25) * 100
    assert finding.evidence[1] == (
        "val_loss has not improved by more than 1% for 25 epochs since its best 0.3 at epoch 15 "
        f"(now 0.8, +166.7%), while train_loss fell {train_fell:.4g}% "
        f"({train_15:.4g} -> {train_40:.4g} at epoch 40)"
    )
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
    # Best val 0.45 first at epoch 4 (the tie at epoch 5 goes to the earlier epoch); epochs 5-8
    # follow it. val 0.45 -> 0.453 is +0.6667%; train 0.7 at epoch 4 -> 0.5 fell 2/7 = 28.57%.
    assert finding.evidence[0] == (
        "val_loss has not improved by more than 1% for 4 epochs since its best 0.45 at epoch 4 "
        "(now 0.453, +0.6667%), while train_loss fell 28.57% (0.7 -> 0.5 at epoch 8)"
    )
    assert finding.evidence[1] == "best val_loss at epoch 4; 4 epochs trained after it"
    assert finding.best_epoch == 4
    assert finding.epochs_after_best == 4
    assert finding.recommendations  # suspected runs get advice too


def test_trend_needs_patience_evaluations_since_the_best() -> None:
    # Best val at epoch 6 (post-warmup epochs 3-8): only 2 evaluations after it, patience is 3.
    train = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    val = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.505, 0.51]
    spec = make_spec(overfitting={"gapThreshold": 100})
    assert analyze_overfitting(make_history(train, val), spec).rules == []
    # One more stalled evaluation makes 3.
    history = make_history([*train, 0.2], [*val, 0.508])
    finding = analyze_overfitting(history, spec)
    assert finding.rules == ["trend"]
    assert "for 3 epochs since its best 0.5 at epoch 6" in finding.evidence[0]


def test_trend_needs_training_loss_still_improving() -> None:
    history = trend_only()  # best val at epoch 4, where train_loss was 0.7
    # Training stalled over the last 3 epochs, but at 0.65 it is still 7.1% below its value at
    # the best validation epoch: measured from the best, the trend holds.
    for row in history[-3:]:
        row["train_loss"] = 0.65
    assert analyze_overfitting(history, make_spec()).rules == ["trend"]
    # 0.695 is only 0.71% below 0.7 (the limit is 0.7 * 0.99 = 0.693): a plateau, not overfitting.
    for row in history[4:]:
        row["train_loss"] = 0.695
    finding = analyze_overfitting(history, make_spec())
    assert finding.verdict == "none"
    assert finding.rules == []
    # 0.69 is 1.43% below: the trend is back.
    history[-1]["train_loss"] = 0.69
    assert analyze_overfitting(history, make_spec()).rules == ["trend"]


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_min_delta_is_relative(scale: float) -> None:
    # Best val 0.45 at epoch 5, then 3 stalled evaluations; training falls 0.4 -> 0.398 after it,
    # 0.5%: below a 1% minDelta, above 0.1%. The gap and diverging rules are switched off (huge
    # threshold) to isolate the trend rule.
    train = [scale * t for t in (1.0, 0.8, 0.6, 0.5, 0.4, 0.399, 0.398, 0.398)]
    val = [scale * v for v in (1.0, 0.8, 0.6, 0.5, 0.45, 0.46, 0.47, 0.48)]
    history = make_history(train, val)

    strict = make_spec(overfitting={"minDelta": 0.01, "gapThreshold": 100})
    finding = analyze_overfitting(history, strict)
    assert finding.verdict == "none"
    assert finding.rules == []

    lenient = make_spec(overfitting={"minDelta": 0.001, "gapThreshold": 100})
    finding = analyze_overfitting(history, lenient)
    assert finding.verdict == "suspected"
    assert finding.rules == ["trend"]
    # val 0.45 -> 0.48 is +6.667% at any scale; train fell 0.002 / 0.4 = 0.5%.
    assert finding.evidence[0] == (
        "val_loss has not improved by more than 0.1% for 3 epochs since its best "
        f"{0.45 * scale:.4g} at epoch 5 (now {0.48 * scale:.4g}, +6.667%), while train_loss "
        f"fell 0.5% ({0.4 * scale:.4g} -> {0.398 * scale:.4g} at epoch 8)"
    )


def test_trend_fires_on_memorizing_run_with_noisy_tiny_training_loss() -> None:
    # Near zero the training loss of a memorizing model jitters: over the last 3 epochs it goes
    # 0.0008 -> 0.0011 -> 0.0006 -> 0.0009, up, not down. Measured from the best validation
    # epoch (5, train 0.05) it fell 98.2%, and val has not improved for 7 epochs.
    train = [1.0, 0.6, 0.3, 0.12, 0.05, 0.02, 0.008, 0.003, 0.0008, 0.0011, 0.0006, 0.0009]
    val = [1.05, 0.7, 0.45, 0.36, 0.34, 0.345, 0.35, 0.352, 0.349, 0.355, 0.351, 0.356]
    finding = analyze_overfitting(make_history(train, val), make_spec())
    assert finding.verdict == "overfitting"
    assert finding.rules == ["gap", "trend"]  # val is 4.7% above its minimum: not diverging
    # val 0.34 -> 0.356 is +4.706%; train (0.05 - 0.0009) / 0.05 = 98.2%.
    assert finding.evidence[1] == (
        "val_loss has not improved by more than 1% for 7 epochs since its best 0.34 at epoch 5 "
        "(now 0.356, +4.706%), while train_loss fell 98.2% (0.05 -> 0.0009 at epoch 12)"
    )
    assert finding.best_epoch == 5
    assert finding.epochs_after_best == 7


# --- noise floor of the gap rule ---------------------------------------------------------------


def noisy_small_losses(se: list[float] | None = None) -> History:
    """Small losses, relative gap 0.2 on epochs 3-5 but an absolute gap of 0.01, 0.008, 0.006."""
    train = [0.2, 0.1, 0.05, 0.04, 0.03]
    val = [0.22, 0.12, 0.06, 0.048, 0.036]
    if se is None:
        return make_history(train, val)
    return make_history(train, val, val_loss_se=se)


def test_gap_within_two_standard_errors_does_not_fire() -> None:
    spec = make_spec()
    # Without a standard error the relative gap 0.2 > 0.1 fires.
    assert analyze_overfitting(noisy_small_losses(), spec).rules == ["gap"]
    # se 0.02: 2 se = 0.04 exceeds every gap in the window; the gap is noise.
    finding = analyze_overfitting(noisy_small_losses([0.02] * 5), spec)
    assert finding.verdict == "none"
    assert finding.rules == []
    assert finding.gap == pytest.approx(0.2)  # still reported
    # se 0.001: 2 se = 0.002 is below every gap; the evidence names the floor.
    finding = analyze_overfitting(noisy_small_losses([0.001] * 5), spec)
    assert finding.verdict == "suspected"
    assert finding.rules == ["gap"]
    assert finding.evidence[0] == (
        "val_loss 0.036 vs train_loss 0.03 at epoch 5: gap 0.2 > 0.1 for the last 3 epochs "
        "(smallest 0.2); 0.006 > 2 standard errors (0.002)"
    )


def test_noise_floor_must_clear_every_epoch_of_the_window() -> None:
    # Epoch 4 alone is noisy (gap 0.008 <= 2 * 0.02): the gap does not hold for 3 evaluations.
    se = [0.001, 0.001, 0.001, 0.02, 0.001]
    assert analyze_overfitting(noisy_small_losses(se), make_spec()).rules == []
    # A noisy epoch before the window (epoch 2) does not matter.
    se = [0.001, 0.05, 0.001, 0.001, 0.001]
    assert analyze_overfitting(noisy_small_losses(se), make_spec()).rules == ["gap"]


def test_noise_floor_is_strict() -> None:
    # Exact binary fractions: val - train = 0.25 on epochs 3-5 (relative gap 0.5).
    train = [2.0, 1.0, 0.5, 0.5, 0.5]
    val = [2.0, 1.5, 0.75, 0.75, 0.75]
    at_floor = make_history(train, val, val_loss_se=[0.125] * 5)  # 0.25 == 2 * 0.125
    assert analyze_overfitting(at_floor, make_spec()).rules == []
    above = make_history(train, val, val_loss_se=[0.0625] * 5)  # 0.25 > 2 * 0.0625
    finding = analyze_overfitting(above, make_spec())
    assert finding.rules == ["gap"]
    assert finding.evidence[0].endswith("; 0.25 > 2 standard errors (0.125)")


# --- the delivered (restored) epoch ----------------------------------------------------------


def u_shaped() -> History:
    """Val falls with train (gap 0.05 at most) to 0.42 at epoch 6, then rises while train -> 0."""
    train = [1.0, 0.8, 0.6, 0.5, 0.45, 0.4, 0.3, 0.2, 0.12, 0.07, 0.04, 0.02]
    val = [1.02, 0.82, 0.62, 0.52, 0.47, 0.42, 0.45, 0.5, 0.56, 0.63, 0.7, 0.78]
    return make_history(train, val)


def test_verdict_judges_the_epoch_early_stopping_restored() -> None:
    history = u_shaped()
    spec = make_spec()
    full = analyze_overfitting(history, spec)
    assert full.verdict == "overfitting"
    assert full.rules == ["gap", "trend", "diverging"]

    finding = analyze_overfitting(history, spec, delivered_epoch=6)
    # Up to epoch 6 val only fell and the gap is 0.02 / 0.4 = 0.05 < 0.1.
    assert finding.verdict == "none"
    assert finding.rules == []
    assert finding.recommendations == []
    assert finding.best_epoch == 6
    assert finding.gap == pytest.approx(0.05)
    # The cost after the best epoch still comes from the whole run: epochs 7-12.
    assert finding.epochs_after_best == 6
    # Full history: gap (0.78 - 0.02) / 0.02 = 38 at epoch 12, smallest (0.63 - 0.07) / 0.07 = 8;
    # val 0.42 -> 0.78 is +85.71%, train 0.4 -> 0.02 fell 95%.
    assert finding.evidence == [
        "early stopping kept the weights of epoch 6; in the 6 epochs after it the run went on to "
        "'overfitting' (val_loss 0.78 vs train_loss 0.02 at epoch 12: gap 38 > 0.1 for the last "
        "3 epochs (smallest 8); val_loss has not improved by more than 1% for 6 epochs since its "
        "best 0.42 at epoch 6 (now 0.78, +85.71%), while train_loss fell 95% (0.4 -> 0.02 at "
        "epoch 12))"
    ]


def test_delivered_last_epoch_changes_nothing() -> None:
    history = u_shaped()
    spec = make_spec()
    full = analyze_overfitting(history, spec)
    assert analyze_overfitting(history, spec, delivered_epoch=12) == full
    assert analyze_overfitting(history, spec, delivered_epoch=None) == full
    assert not any("early stopping kept" in line for line in full.evidence)


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
    spec = make_spec(training={"precision": "bf16", "learningRate": 0.01,
                                "resources": {"gpusPerNode": 1}})
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


def test_validation_loss_creeping_down_by_less_than_min_delta_counts_as_stalled() -> None:
    # Validation improves 0.1% per epoch (7 epochs: 0.7%, below minDelta 1%) while training
    # falls 10% per epoch: early stopping would have stopped, so the trend rule fires.
    val = [1.0, 0.6, 0.5] + [0.5 * 0.999**i for i in range(1, 8)]
    train = [1.0, 0.6, 0.45] + [0.45 * 0.9**i for i in range(1, 8)]
    spec = make_spec(overfitting={"warmupEpochs": 0})
    finding = analyze_overfitting(make_history(train, val), spec)
    assert "trend" in finding.rules
    trend = next(e for e in finding.evidence if e.startswith("val_loss has not improved"))
    assert "for 7 epochs since its best 0.5 at epoch 3" in trend
    # The same run whose validation improves 2% per epoch is not stalled.
    val_improving = [1.0, 0.6, 0.5] + [0.5 * 0.98**i for i in range(1, 8)]
    finding = analyze_overfitting(make_history(train, val_improving), spec)
    assert "trend" not in finding.rules


def test_disabled_early_stopping_keeps_its_monitor_out_of_the_best_epoch() -> None:
    """With earlyStopping off, the trainer keeps val_loss's best: so does the finding."""
    history = make_history(
        [1.0, 0.8, 0.7, 0.6], [1.0, 0.5, 0.55, 0.6], val_accuracy=[0.5, 0.8, 0.9, 0.85]
    )
    disabled = make_spec(training={"earlyStopping": {"enabled": False,
                                                     "monitor": "val_accuracy"}})
    assert analyze_overfitting(history, disabled).best_epoch == 2
