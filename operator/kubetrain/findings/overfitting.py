"""Overfitting finding: pure rules over a per-epoch metric history.

The history is a sequence of per-epoch mappings such as
``{"epoch": 7, "train_loss": 0.21, "val_loss": 0.34, "val_accuracy": 0.91, "lr": 1e-3}``.

Compared with SageMaker Debugger's Overfit/Overtraining rules (docs/design.md, Findings), every
rule here must hold for ``patience`` consecutive evaluations ending at the last epoch, so one
noisy evaluation never fires, and every threshold is *relative*, so the same spec works for a
cross-entropy near 0.1 and a regression MSE near 1000.

Rules (only epochs after ``warmupEpochs`` count):

- ``gap``: ``(val_loss - train_loss) / train_loss > gapThreshold`` for the last ``patience``
  evaluations, and, where the history carries ``val_loss_se`` (the standard error of the
  validation loss, from the per-example losses), ``val_loss - train_loss > 2 * val_loss_se``:
  at small losses a relative gap of 0.1 is well inside the noise of a few hundred examples.
- ``trend``: the validation loss has not improved by more than a relative ``minDelta`` for at
  least ``patience`` evaluations since its best, while the training loss fell by more than a
  relative ``minDelta`` since that best evaluation.
- ``diverging``: the validation loss of each of the last ``patience`` evaluations is more than
  ``gapThreshold`` (relative) above its post-warmup minimum.
- ``not-decreasing``: after ``warmupEpochs + patience`` epochs the training loss has not dropped
  by a relative ``minDelta`` from its first value (a learning problem, not overfitting).
- ``non-finite``: a NaN or infinite training or validation loss.

The verdict is about the model the user gets: when early stopping restored an earlier epoch,
the rules judge the history up to that epoch, and what happened after it is reported as
evidence (and as cost after the best epoch), not as the model's verdict.

Verdict: ``overfitting`` when ``trend`` and (``gap`` or ``diverging``) fire; ``suspected`` when
any of ``gap``/``trend``/``diverging`` fires without that combination; ``none`` otherwise.
``not-decreasing`` and ``non-finite`` are reported but never set the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kubetrain.api.metrics import DEFAULT_METRIC, is_maximized, monitored_metric
from kubetrain.api.spec import BUILTIN_MODEL_PARAMS, OverfittingSpec, TrainingJobSpec
from kubetrain.api.status import OverfittingFinding, Verdict

# Floor of the training loss in the gap's denominator: a loss of exactly 0 (memorized data)
# must give a huge gap, not a ZeroDivisionError.
_TINY_LOSS = 1e-8
# The rules that make up the overfitting verdict, in the order they are reported.
_OVERFIT_RULES = ("gap", "trend", "diverging")


@dataclass(frozen=True)
class _Epoch:
    """One evaluation, with missing or non-numeric metrics as None."""

    epoch: int
    train_loss: float | None
    val_loss: float | None
    val_loss_se: float | None = None

    def point(self) -> _Point | None:
        """The evaluation as a rule input, or None when a loss is missing or non-finite."""
        if _is_finite(self.train_loss) and _is_finite(self.val_loss):
            assert self.train_loss is not None and self.val_loss is not None
            se = self.val_loss_se if _is_finite(self.val_loss_se) else None
            return _Point(self.epoch, self.train_loss, self.val_loss, se)
        return None


@dataclass(frozen=True)
class _Point:
    """An evaluation with both losses finite: the only kind the gap/trend/diverging rules see."""

    epoch: int
    train_loss: float
    val_loss: float
    val_loss_se: float | None = None

    @property
    def gap_is_noise(self) -> bool:
        """The gap is within two standard errors of the validation loss."""
        if self.val_loss_se is None:
            return False
        return self.val_loss - self.train_loss <= 2 * self.val_loss_se


def _is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _number(row: Mapping[str, float], key: str) -> float | None:
    """A metric as a float, or None when the row lacks it (not every run logs every metric)."""
    value = row.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _epoch_of(row: Mapping[str, float], index: int) -> int:
    """The row's 1-based epoch; rows without a usable ``epoch`` key are numbered by position."""
    raw = _number(row, "epoch")
    return int(raw) if raw is not None and math.isfinite(raw) else index + 1


def _epochs(history: Sequence[Mapping[str, float]]) -> list[_Epoch]:
    """The history as evaluations sorted by epoch, one per epoch.

    A resumed run can log an epoch twice; the later row wins because it describes the weights
    that training continued from.
    """
    by_epoch: dict[int, _Epoch] = {}
    for index, row in enumerate(history):
        epoch = _epoch_of(row, index)
        by_epoch[epoch] = _Epoch(
            epoch, _number(row, "train_loss"), _number(row, "val_loss"), _number(row, "val_loss_se")
        )
    return [by_epoch[e] for e in sorted(by_epoch)]


def _fmt(value: float) -> str:
    """A number for a human sentence: 4 significant digits are enough to judge a loss."""
    return f"{value:.4g}"


def _round_sig(value: float, digits: int = 4) -> float:
    """Round to significant digits: a gap of 12345.678 and of 0.0123 both read sensibly."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def _gap(train_loss: float, val_loss: float) -> float:
    """Relative generalization gap; the denominator is floored so train_loss 0 is allowed."""
    return (val_loss - train_loss) / max(train_loss, _TINY_LOSS)


def best_epoch(
    history: Sequence[Mapping[str, float]], monitor: str = DEFAULT_METRIC
) -> int | None:
    """The epoch with the best finite ``monitor`` value, or None when there is none.

    Accuracy is maximized, losses and RMSE are minimized. On a tie the earliest epoch wins: later
    epochs that only match the best cost more and generalize no better.
    """
    maximize = is_maximized(monitor)
    best: tuple[float, int] | None = None
    for index, row in enumerate(history):
        value = _number(row, monitor)
        if value is None or not math.isfinite(value):
            continue
        epoch = _epoch_of(row, index)
        score = -value if maximize else value
        if best is None or score < best[0] or (score == best[0] and epoch < best[1]):
            best = (score, epoch)
    return None if best is None else best[1]


# --- the rules -------------------------------------------------------------------------------
# Each returns an evidence sentence when it fires and None otherwise, so that the verdict and
# the evidence can never disagree.


def _gap_rule(window: Sequence[_Point], cfg: OverfittingSpec) -> str | None:
    gaps = [_gap(e.train_loss, e.val_loss) for e in window]
    if not all(g > cfg.gap_threshold for g in gaps):
        return None
    if any(e.gap_is_noise for e in window):
        return None
    last = window[-1]
    noise = (
        f"; {_fmt(last.val_loss - last.train_loss)} > 2 standard errors "
        f"({_fmt(2 * last.val_loss_se)})"
        if last.val_loss_se is not None
        else ""
    )
    return (
        f"val_loss {_fmt(last.val_loss)} vs train_loss {_fmt(last.train_loss)} "
        f"at epoch {last.epoch}: gap {_fmt(gaps[-1])} > {_fmt(cfg.gap_threshold)} "
        f"for the last {len(window)} epochs (smallest {_fmt(min(gaps))}){noise}"
    )


def _trend_rule(evaluations: Sequence[_Point], cfg: OverfittingSpec) -> str | None:
    """Validation stalled since its best evaluation while training kept improving.

    Measured from the best validation loss rather than over a short window: near zero the
    training loss of a memorizing model moves by tiny, noisy steps, but it keeps falling
    relative to where it was when validation stopped improving.
    """
    # Counted as early stopping counts: the reference moves only on an improvement of more than
    # minDelta, so a validation loss creeping down by tiny steps still counts as stalled.
    best = evaluations[0]
    for evaluation in evaluations[1:]:
        if evaluation.val_loss < best.val_loss - abs(best.val_loss) * cfg.min_delta:
            best = evaluation
    since = evaluations[evaluations.index(best) + 1 :]
    if len(since) < cfg.patience:
        return None
    last = evaluations[-1]
    if not last.train_loss < best.train_loss * (1 - cfg.min_delta):
        return None
    val_change = (last.val_loss - best.val_loss) / max(abs(best.val_loss), _TINY_LOSS)
    train_change = (best.train_loss - last.train_loss) / max(abs(best.train_loss), _TINY_LOSS)
    return (
        f"val_loss has not improved by more than {_fmt(cfg.min_delta * 100)}% for "
        f"{len(since)} epochs since its best {_fmt(best.val_loss)} at epoch {best.epoch} "
        f"(now {_fmt(last.val_loss)}, {val_change * 100:+.4g}%), while train_loss fell "
        f"{_fmt(train_change * 100)}% ({_fmt(best.train_loss)} -> {_fmt(last.train_loss)} at "
        f"epoch {last.epoch})"
    )


def _diverging_rule(
    evaluations: Sequence[_Point], window: Sequence[_Point], cfg: OverfittingSpec
) -> str | None:
    lowest = min(evaluations, key=lambda e: e.val_loss)
    floor = lowest.val_loss
    limit = floor * (1 + cfg.gap_threshold)
    if not all(e.val_loss > limit for e in window):
        return None
    last = window[-1]
    rise = (last.val_loss - floor) / max(abs(floor), _TINY_LOSS)
    return (
        f"val_loss rose {_fmt(rise * 100)}% from its minimum {_fmt(floor)} at epoch "
        f"{lowest.epoch} to {_fmt(last.val_loss)} at epoch {last.epoch}, above "
        f"{_fmt(cfg.gap_threshold * 100)}% for the last {len(window)} epochs"
    )


def _not_decreasing_rule(epochs: Sequence[_Epoch], cfg: OverfittingSpec) -> str | None:
    if not epochs or epochs[-1].epoch < cfg.warmup_epochs + cfg.patience:
        # Too early to tell a slow start from a model that does not learn.
        return None
    trains = [e for e in epochs if _is_finite(e.train_loss)]
    if len(trains) < 2:
        return None
    first, last = trains[0], trains[-1]
    assert first.train_loss is not None and last.train_loss is not None
    if last.train_loss < first.train_loss * (1 - cfg.min_delta):
        return None
    return (
        f"train_loss did not decrease by {_fmt(cfg.min_delta * 100)}%: {_fmt(first.train_loss)} "
        f"at epoch {first.epoch} -> {_fmt(last.train_loss)} at epoch {last.epoch}"
    )


def _non_finite_rule(epochs: Sequence[_Epoch]) -> str | None:
    for e in epochs:
        bad = [
            f"{name} {value}"
            for name, value in (("train_loss", e.train_loss), ("val_loss", e.val_loss))
            if value is not None and not math.isfinite(value)
        ]
        if bad:
            return f"non-finite loss first at epoch {e.epoch}: {', '.join(bad)}"
    return None


# --- recommendations ---------------------------------------------------------------------------


def _model_size_recommendation(spec: TrainingJobSpec) -> str:
    """Name the width parameters of the chosen model and their current values."""
    model = spec.model
    if model is None:
        return "reduce model size (your training.command's model: fewer/narrower layers)"
    if model.builtin is None:
        return "reduce model size (model.params passed to your entrypoint: fewer/narrower layers)"
    keys = BUILTIN_MODEL_PARAMS[model.builtin]
    parts = [
        f"model.params.{key} (now {model.params[key]})"
        if key in model.params
        else f"model.params.{key} (now the {model.builtin} default)"
        for key in keys
    ]
    return f"reduce model size: halve {' or '.join(parts)}"


def _overfitting_recommendations(spec: TrainingJobSpec, best: int | None) -> list[str]:
    """Regularization and validation changes, most effective first, skipping what is set."""
    training = spec.training
    recs: list[str] = []
    es = training.early_stopping
    keep = f" (epoch {best})" if best is not None else ""
    if es is None or not es.enabled:
        recs.append(f"enable training.earlyStopping (patience 5) to keep the best epoch{keep}")
    elif not es.restore_best:
        recs.append(f"set training.earlyStopping.restoreBest: true to keep the best epoch{keep}")
    if not spec.augmentation.enabled:
        recs.append(
            "enable augmentation (augmentation.enabled: true, augmentation.multiplier: 2 to 4) "
            "for more varied training data"
        )
    if spec.dataset.fraction < 1:
        recs.append(
            f"raise dataset.fraction (now {_fmt(spec.dataset.fraction)}) to 1 to train on all "
            "the data"
        )
    if training.dropout == 0:
        recs.append("set training.dropout to 0.2 to 0.5")
    if training.weight_decay == 0:
        recs.append("set training.weightDecay (e.g. 1e-4 to 1e-2)")
    if training.label_smoothing == 0 and spec.dataset.declared_task == "classification":
        recs.append("set training.labelSmoothing to 0.1")
    recs.append(_model_size_recommendation(spec))
    if training.cross_validation is None:
        recs.append("use training.crossValidation.folds (e.g. 5) to check the estimate")
    if spec.findings.overfitting.action != "stop":
        recs.append(
            "set findings.overfitting.action: stop to end training when overfitting is detected"
        )
    return recs


def _non_finite_recommendations(spec: TrainingJobSpec) -> list[str]:
    training = spec.training
    lr = training.learning_rate
    recs = [
        f"lower training.learningRate (now {_fmt(lr)}) to {_fmt(lr / 10)} to avoid the "
        "non-finite loss"
    ]
    # auto is fp32 on the CPU: only a GPU run may have trained in a reduced precision.
    if training.precision in ("bf16", "fp16") or (
            training.precision == "auto" and training.resources.gpus_per_node > 0):
        recs.append(f"set training.precision: fp32 (now {training.precision})")
    return recs


def _not_decreasing_recommendations(spec: TrainingJobSpec) -> list[str]:
    training = spec.training
    lr = training.learning_rate
    recs = [
        f"change training.learningRate (now {_fmt(lr)}): try {_fmt(lr * 10)} if the loss is "
        f"flat, {_fmt(lr / 10)} if it oscillates",
        "check the data: labels (dataset.target), scaling and the training split size",
    ]
    if training.weight_decay > 0.1:
        recs.append(f"lower training.weightDecay (now {_fmt(training.weight_decay)})")
    if training.dropout >= 0.5:
        recs.append(f"lower training.dropout (now {_fmt(training.dropout)})")
    return recs


# --- public API --------------------------------------------------------------------------------


def analyze_overfitting(
    history: Sequence[Mapping[str, float]],
    spec: TrainingJobSpec,
    delivered_epoch: int | None = None,
) -> OverfittingFinding:
    """Apply the overfitting rules to ``history`` with ``spec.findings.overfitting``.

    Only evaluations after ``warmupEpochs`` count; ``gap``/``trend``/``diverging`` look at the
    last ``patience`` of them, and do not fire when any of those has a missing or non-finite
    loss (a NaN is reported by its own rule, not hidden inside a gap).

    ``delivered_epoch``: the epoch whose weights the run kept (early stopping's restoreBest).
    The verdict judges the history up to it; the epochs after it become evidence.
    """
    full = _epochs(history)
    if delivered_epoch is not None and full and delivered_epoch < full[-1].epoch:
        kept = [row for i, row in enumerate(history) if _epoch_of(row, i) <= delivered_epoch]
        finding = analyze_overfitting(kept, spec)
        after = analyze_overfitting(history, spec)
        finding.epochs_after_best = after.epochs_after_best
        # The kept history ends at its best epoch; its "N epochs after it" line would say 0.
        finding.evidence = [e for e in finding.evidence if "epochs trained after it" not in e]
        finding.evidence.append(
            f"early stopping kept the weights of epoch {delivered_epoch}; in the "
            f"{full[-1].epoch - delivered_epoch} epochs after it the run went on to "
            f"'{after.verdict}'"
            + (f" ({'; '.join(after.evidence[:2])})" if after.rules else "")
        )
        return finding
    cfg = spec.findings.overfitting
    epochs = full
    if not epochs:
        return OverfittingFinding()

    monitor = monitored_metric(spec)
    if not any(_is_finite(_number(row, monitor)) for row in history):
        # The monitor was not logged (e.g. val_accuracy on a custom script): fall back to the loss.
        monitor = DEFAULT_METRIC
    best = best_epoch(history, monitor)
    last = epochs[-1]
    last_point = last.point()
    gap = (
        _round_sig(_gap(last_point.train_loss, last_point.val_loss))
        if last_point is not None
        else None
    )

    fired: dict[str, str] = {}
    after_warmup = [e.point() for e in epochs if e.epoch > cfg.warmup_epochs]
    raw_window = after_warmup[-cfg.patience :]
    window = [p for p in raw_window if p is not None]
    if len(window) == cfg.patience:
        before = [p for p in after_warmup[: -cfg.patience] if p is not None]
        evaluations = before + window
        for name, sentence in (
            ("gap", _gap_rule(window, cfg)),
            ("trend", _trend_rule(evaluations, cfg)),
            ("diverging", _diverging_rule(evaluations, window, cfg)),
        ):
            if sentence is not None:
                fired[name] = sentence
    for name, sentence in (
        ("not-decreasing", _not_decreasing_rule(epochs, cfg)),
        ("non-finite", _non_finite_rule(epochs)),
    ):
        if sentence is not None:
            fired[name] = sentence

    overfit_rules = [r for r in _OVERFIT_RULES if r in fired]
    verdict: Verdict
    if "trend" in fired and ("gap" in fired or "diverging" in fired):
        # A stalled validation loss alone can be a plateau, and a gap alone can be a hard task
        # with a stable gap; both together with still-improving training is overfitting.
        verdict = "overfitting"
    elif overfit_rules:
        verdict = "suspected"
    else:
        verdict = "none"

    evidence = [fired[r] for r in fired]
    epochs_after_best = max(0, last.epoch - best) if best is not None else 0
    if verdict != "none" and best is not None:
        evidence.append(
            f"best {monitor} at epoch {best}; {epochs_after_best} epochs trained after it"
        )

    recommendations: list[str] = []
    if "non-finite" in fired:
        recommendations += _non_finite_recommendations(spec)
    if "not-decreasing" in fired:
        recommendations += [
            r for r in _not_decreasing_recommendations(spec) if r not in recommendations
        ]
    if verdict != "none":
        recommendations += _overfitting_recommendations(spec, best)

    return OverfittingFinding(
        verdict=verdict,
        gap=gap,
        best_epoch=best,
        epochs_after_best=epochs_after_best,
        rules=list(fired),
        evidence=evidence,
        recommendations=recommendations,
    )


def should_stop_for_overfitting(
    history: Sequence[Mapping[str, float]], spec: TrainingJobSpec
) -> bool:
    """True when the spec asks to stop on overfitting and the verdict is ``overfitting``.

    The trainer calls this after each epoch; ``suspected`` never stops a run, because stopping
    loses epochs that cannot be bought back while a false ``suspected`` costs nothing.
    """
    if spec.findings.overfitting.action != "stop":
        return False
    return analyze_overfitting(history, spec).verdict == "overfitting"
