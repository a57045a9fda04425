"""Overfitting remediation: which regularization the next training tries, and which one wins.

Pure functions of the spec and the attempts so far (their verdicts and validation metrics), so
the stage engine can recompute every decision from the records in status after any restart.

The levers follow the overfitting finding's recommendations, most effective first, grouped so
that an attempt changes one thing or a small set:

1. ``regularize``: early stopping that keeps the best epoch, weight decay, dropout;
2. ``augment``: augmentation on, where the kind of data is known (images: affine transforms
   and noise; tabular: Gaussian noise);
3. ``shrink``: a smaller built-in model (widths halved), label smoothing for classification;
4. ``strengthen``: stronger weight decay and dropout, earlier stopping.

Each attempt starts from the best attempt so far (the original training included) and adds the
next group that changes anything there: greedy forward selection, so a lever that made things
worse is not carried into later attempts. Attempts are compared on the validation split only
(the task's headline metric, then the validation loss, then the earlier attempt); the test
split is reported, never used to choose.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..api.metrics import headline_metric, is_maximized
from ..api.results import TrainingResult
from ..api.spec import BUILTIN_MODEL_PARAMS, RemediationSpec, TrainingJobSpec
from ..api.status import SpecChange, Verdict

DataKind = Literal["image", "tabular"]
# Built-in datasets holding images; every other built-in one is tabular.
_IMAGE_BUILTINS = frozenset({"digits"})
# Regularization strengths of the first attempt and the caps of the stronger ones.
_WEIGHT_DECAY = {"adamw": 0.05, "sgd": 5e-4}
_WEIGHT_DECAY_CAP = {"adamw": 0.5, "sgd": 5e-3}
_DROPOUT, _DROPOUT_STEP, _DROPOUT_CAP = 0.3, 0.2, 0.6
_LABEL_SMOOTHING = 0.1
_AUGMENT_MULTIPLIER = 4
_TABULAR_NOISE = 0.1
_MIN_WIDTH = 8


def data_kind(spec: TrainingJobSpec) -> DataKind | None:
    """Images or tabular rows, when the spec tells without reading the data; None for npz."""
    dataset = spec.dataset
    if dataset.builtin is not None:
        return "image" if dataset.builtin in _IMAGE_BUILTINS else "tabular"
    fmt = dataset.resolved_format
    if fmt == "imagefolder":
        return "image"
    return "tabular" if fmt in ("csv", "parquet") else None


# ----- the spec as a tree of fields --------------------------------------------------------


def _get(data: Mapping[str, Any], path: str) -> Any:
    node: Any = data
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _dump(spec: TrainingJobSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)


def apply_changes(spec: TrainingJobSpec, changes: Sequence[SpecChange]) -> TrainingJobSpec:
    """A copy of spec with each change's field set to its ``after`` value (validated)."""
    data = _dump(spec)
    for change in changes:
        *parents, last = change.field.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = change.after
    return TrainingJobSpec.model_validate(data)


def changes_from_json(text: str) -> list[SpecChange]:
    """The ``--remediation`` argument of an attempt's units: its changes as JSON."""
    return [SpecChange.model_validate(item) for item in json.loads(text)]


def _change(spec: TrainingJobSpec, field: str, after: Any) -> SpecChange:
    return SpecChange(field=field, before=_get(_dump(spec), field), after=after)


# ----- the levers ---------------------------------------------------------------------------

Lever = Callable[[TrainingJobSpec], list[SpecChange]]


def _early_stopping(spec: TrainingJobSpec) -> list[SpecChange]:
    es = spec.training.early_stopping
    if es is not None and es.enabled and es.restore_best:
        return []
    patience = max(3, min(10, spec.training.epochs // 5))
    section = {"enabled": True, "monitor": es.monitor if es else "val_loss",
               "patience": es.patience if es and es.enabled else patience, "restoreBest": True}
    return [_change(spec, "training.earlyStopping", section)]


def _weight_decay(spec: TrainingJobSpec) -> list[SpecChange]:
    if spec.training.weight_decay > 0:
        return []
    return [_change(spec, "training.weightDecay", _WEIGHT_DECAY[spec.training.optimizer])]


def _dropout(spec: TrainingJobSpec) -> list[SpecChange]:
    return [] if spec.training.dropout > 0 else [_change(spec, "training.dropout", _DROPOUT)]


def _augmentation(spec: TrainingJobSpec) -> list[SpecChange]:
    kind = data_kind(spec)
    if spec.augmentation.enabled or kind is None or spec.dataset.streaming == "always":
        return []
    section: dict[str, Any] = {"enabled": True, "multiplier": _AUGMENT_MULTIPLIER}
    if kind == "image":
        section["image"] = {}
    else:
        section["tabular"] = {"noise": _TABULAR_NOISE}
    return [_change(spec, "augmentation", section)]


def _smaller_model(spec: TrainingJobSpec) -> list[SpecChange]:
    model = spec.model
    if model is None or model.builtin is None:
        return []
    changes = []
    for key in ("hiddenUnits", "channels"):
        if key not in BUILTIN_MODEL_PARAMS[model.builtin]:
            continue
        now = model.params.get(key, BUILTIN_MODEL_PARAMS[model.builtin][key])
        widths = list(now) if isinstance(now, list | tuple) else [now]
        halved = [max(_MIN_WIDTH, int(w) // 2) for w in widths]
        if halved != widths:
            after: Any = halved if isinstance(now, list | tuple) else halved[0]
            changes.append(_change(spec, f"model.params.{key}", after))
    return changes


def _label_smoothing(spec: TrainingJobSpec) -> list[SpecChange]:
    if spec.training.label_smoothing > 0 or spec.dataset.declared_task != "classification":
        return []
    return [_change(spec, "training.labelSmoothing", _LABEL_SMOOTHING)]


def _stronger(spec: TrainingJobSpec) -> list[SpecChange]:
    training, changes = spec.training, []
    cap = _WEIGHT_DECAY_CAP[training.optimizer]
    if 0 < training.weight_decay < cap:
        changes.append(_change(spec, "training.weightDecay",
                               min(cap, training.weight_decay * 4)))
    if training.dropout < _DROPOUT_CAP:
        changes.append(_change(spec, "training.dropout",
                               round(min(_DROPOUT_CAP, training.dropout + _DROPOUT_STEP), 4)))
    es = training.early_stopping
    if es is not None and es.enabled and es.patience > 2:
        changes.append(_change(spec, "training.earlyStopping.patience", es.patience // 2))
    return changes


LEVER_GROUPS: tuple[tuple[str, tuple[Lever, ...]], ...] = (
    ("regularize", (_early_stopping, _weight_decay, _dropout)),
    ("augment", (_augmentation,)),
    ("shrink", (_smaller_model, _label_smoothing)),
    ("strengthen", (_stronger,)),
)


# ----- attempts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """A finished attempt as the chooser sees it (attempt 0 is the original training)."""

    changes: tuple[SpecChange, ...] = ()
    verdict: Verdict | None = None
    """None when the attempt failed (it has no model)."""
    validation: Mapping[str, float] | None = None


@dataclass(frozen=True)
class NextAttempt:
    """The changes of the next retraining, from the original spec."""

    changes: tuple[SpecChange, ...]
    added: tuple[str, ...]
    """The fields this attempt adds to the one it starts from."""
    started_from: int
    group: str


@dataclass(frozen=True)
class Done:
    """No further attempt, and why."""

    message: str


def delivered_validation(result: TrainingResult) -> dict[str, float]:
    """The validation metrics of the model a training unit delivers: its best epoch's when
    early stopping restored it, else its last epoch's."""
    source = result.best_metrics if result.restored_best else result.final_metrics
    return {k: float(v) for k, v in (source or result.best_metrics).items()
            if k.startswith("val_")}


def _rank(outcome: Outcome, metric: str) -> tuple[float, float] | None:
    """A sort key, larger is better: the headline metric, then the validation loss."""
    validation = outcome.validation or {}
    if outcome.verdict is None or metric not in validation:
        return None
    value = validation[metric]
    loss = validation.get("val_loss", float("inf"))
    return (value if is_maximized(metric) else -value, -loss)


def best_attempt(outcomes: Sequence[Outcome], metric: str) -> int:
    """The attempt with the best validation metric; on a tie, the earlier one (0: the
    original). The test split plays no part."""
    best, best_key = 0, _rank(outcomes[0], metric) if outcomes else None
    for index, outcome in enumerate(outcomes[1:], start=1):
        key = _rank(outcome, metric)
        if key is not None and (best_key is None or key > best_key):
            best, best_key = index, key
    return best


def _added(base: Sequence[SpecChange], added: Sequence[SpecChange]) -> tuple[SpecChange, ...]:
    """The base's changes with the new ones over them (a field changed again keeps its first
    ``before``: changes are always relative to the original spec)."""
    merged = {c.field: c for c in base}
    for change in added:
        first = merged.get(change.field)
        merged[change.field] = change if first is None else first.model_copy(
            update={"after": change.after})
    fields = [c.field for c in base] + [c.field for c in added if c.field not in
                                        {b.field for b in base}]
    return tuple(merged[f] for f in fields)


def _schedule(spec: TrainingJobSpec, outcomes: Sequence[Outcome], metric: str,
              settings: RemediationSpec) -> tuple[NextAttempt | Done, int]:
    """The decision after ``outcomes``, and the index of the next lever group to try."""
    group = 0
    for done in range(1, len(outcomes) + 1):
        decision, group = _decide(spec, outcomes[:done], metric, settings, group)
        if isinstance(decision, Done):
            return decision, group
        if done == len(outcomes):
            return decision, group
    raise ValueError("no outcome: the original training has not finished")


def _decide(spec: TrainingJobSpec, outcomes: Sequence[Outcome], metric: str,
            settings: RemediationSpec, group: int) -> tuple[NextAttempt | Done, int]:
    last = len(outcomes) - 1
    if outcomes[-1].verdict is None:
        return Done(f"attempt {last} failed; kept the best model so far"), group
    best = best_attempt(outcomes, metric)
    verdict = outcomes[best].verdict
    if verdict not in settings.on:
        what = "the original training" if best == 0 else f"attempt {best}"
        return Done(f"{what} is not overfitting (verdict {verdict})"), group
    if last >= settings.max_attempts:
        return Done(f"remediation.maxAttempts ({settings.max_attempts}) reached"), group
    base = outcomes[best].changes
    base_spec = apply_changes(spec, base)
    while group < len(LEVER_GROUPS):
        name, levers = LEVER_GROUPS[group]
        group += 1
        new = [change for lever in levers for change in lever(base_spec)]
        if new:
            return NextAttempt(_added(base, new), tuple(c.field for c in new), best, name), group
    return Done("no regularization left to try"), group


def next_attempt(spec: TrainingJobSpec, outcomes: Sequence[Outcome],
                 settings: RemediationSpec, task: str) -> NextAttempt | Done:
    """What to train next, given the original training (``outcomes[0]``) and the attempts so
    far, each finished; ``spec`` is the original training's (the sweep's best parameters
    applied). ``Done`` when the best attempt no longer overfits, an attempt failed,
    ``maxAttempts`` are spent or no lever is left."""
    return _schedule(spec, outcomes, headline_metric(task), settings)[0]


def gain_over_original(original: Mapping[str, float], attempt: Mapping[str, float],
              task: str) -> float | None:
    """The attempt's headline test metric against the original's, positive when better
    (accuracy: this minus the original; rmse: the original minus this)."""
    key = "test_" + headline_metric(task).removeprefix("val_")
    if key not in original or key not in attempt:
        return None
    gain = attempt[key] - original[key]
    return round(gain if is_maximized(headline_metric(task)) else -gain, 6)
