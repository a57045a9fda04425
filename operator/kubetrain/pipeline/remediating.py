"""The stage engine's part of findings.overfitting.action: remediate.

After the final training, the engine asks ``findings.remediation.next_attempt`` (pure) what to
train next from the attempts' records in status, makes the attempt's units (``remediate-k``,
after ``remediate-k-augment`` when it switches augmentation on), and writes every attempt,
the chosen one and the gains into ``status.findings.overfitting.remediation``. Nothing is kept
between calls but the unit records: an operator restarted mid-remediation recomputes the same
decisions and adopts the units it had launched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..api.metrics import headline_metric
from ..api.results import TrainingResult, parse_result
from ..api.spec import TrainingJobSpec
from ..api.status import (
    RemediationAttempt,
    RemediationStatus,
    StagePhase,
    TrainingStatus,
    UnitStatus,
)
from ..findings.remediation import (
    Done,
    NextAttempt,
    Outcome,
    best_attempt,
    delivered_validation,
    gain_over_original,
    next_attempt,
)
from . import status as st
from .params import apply_params
from .plan import RemediationLoop, WorkUnit
from .records import UnitRecords

# Remediation units whose failure ends remediation (the best model so far stays), not the job.
TOLERATED_FAILURES = ("remediate", "remediate-augment")


@dataclass
class _Attempt:
    index: int
    plan: NextAttempt
    augment: UnitStatus | None
    train: UnitStatus | None
    result: TrainingResult | None

    @property
    def finished(self) -> bool:
        if self.augment is not None and self.augment.phase == StagePhase.FAILED:
            return True
        return self.train is not None and StagePhase(self.train.phase).finished

    @property
    def phase(self) -> StagePhase:
        if self.augment is not None and self.augment.phase == StagePhase.FAILED:
            return StagePhase.FAILED
        return StagePhase(self.train.phase) if self.train is not None else StagePhase.PENDING


@dataclass
class _State:
    """The remediation as the records tell it now."""

    task: str
    original: TrainingResult
    attempts: list[_Attempt]
    outcomes: list[Outcome]
    """The original and each finished attempt."""
    next: NextAttempt | Done | None
    """What comes after the finished attempts; None while an attempt runs."""

    def result(self, index: int) -> TrainingResult | None:
        return self.original if index == 0 else self.attempts[index - 1].result

    @property
    def chosen(self) -> int:
        return best_attempt(self.outcomes, headline_metric(self.task))


def _needs_augmentation(spec: TrainingJobSpec, plan: NextAttempt) -> bool:
    return not spec.augmentation.enabled and any(c.field == "augmentation" for c in plan.changes)


class RemediationSteps(UnitRecords):
    """The remediation loop's decisions, for the engine (``_Engine`` inherits them)."""

    @property
    def remediating(self) -> bool:
        return self.spec.findings.overfitting.action == "remediate"

    def _base_spec(self) -> TrainingJobSpec:
        """The original training's spec: the sweep's best parameters applied."""
        best = self.status.tuning.best if self.status.tuning else None
        return apply_params(self.spec, best.params) if best and best.params else self.spec

    def _remediation_state(self) -> _State | None:
        if not self.remediating:
            return None
        units = st.stage_status(self.status, "training").units
        train = units.get("train")
        original = parse_result("train", train.result) if train is not None else None
        if not (isinstance(original, TrainingResult) and train is not None
                and train.phase == StagePhase.SUCCEEDED and original.overfitting is not None):
            return None
        spec, settings = self._base_spec(), self.spec.findings.overfitting.remediation_settings
        outcomes = [Outcome((), original.overfitting.verdict, delivered_validation(original))]
        attempts: list[_Attempt] = []
        while True:
            decision = next_attempt(spec, outcomes, settings, original.task)
            index = len(outcomes)
            name = f"remediate-{index}"
            augment, trained = units.get(name + "-augment"), units.get(name)
            if (augment is None and trained is None) or not isinstance(decision, NextAttempt):
                return _State(original.task, original, attempts, outcomes, decision)
            result = parse_result("remediate", trained.result) if trained else None
            attempt = _Attempt(index, decision, augment, trained,
                               result if isinstance(result, TrainingResult) else None)
            attempts.append(attempt)
            if not attempt.finished:
                return _State(original.task, original, attempts, outcomes, None)
            ok = attempt.result is not None and attempt.phase == StagePhase.SUCCEEDED
            verdict = attempt.result.overfitting.verdict if ok and attempt.result and \
                attempt.result.overfitting else ("none" if ok else None)
            outcomes.append(Outcome(decision.changes, verdict, delivered_validation(
                attempt.result) if ok and attempt.result else None))

    def _remediation_members(self, loop: RemediationLoop,
                             units: dict[str, UnitStatus]) -> tuple[list[WorkUnit], bool]:
        """The attempts' units so far, plus the next one's when the findings ask for it; True
        when remediation is over."""
        state = self._remediation_state()
        if state is None:
            return [], True
        spec = self._base_spec()
        if isinstance(state.next, NextAttempt):
            index = len(state.outcomes)
            attempt = _Attempt(index, state.next, None, None, None)
            if _needs_augmentation(spec, state.next):
                attempt.augment = units.setdefault(loop.augment_unit(index).name, UnitStatus())
            else:
                attempt.train = units.setdefault(loop.unit(index).name, UnitStatus())
            state.attempts.append(attempt)
            changes = ", ".join(f"{c.field} {json.dumps(c.before)} -> {json.dumps(c.after)}"
                                for c in state.next.changes if c.field in state.next.added)
            self.event("Normal", "Remediating", f"attempt {index} of "
                       f"{loop.max_attempts} starts from attempt {state.next.started_from}: "
                       f"{changes}")
        members: list[WorkUnit] = []
        for attempt in state.attempts:
            if attempt.augment is not None:
                members.append(loop.augment_unit(attempt.index))
                if attempt.augment.phase == StagePhase.SUCCEEDED and attempt.train is None:
                    attempt.train = units.setdefault(loop.unit(attempt.index).name,
                                                     UnitStatus())
            if attempt.train is not None:
                members.append(loop.unit(attempt.index))
        return members, isinstance(state.next, Done)

    def _remediation_args(self, unit: WorkUnit) -> tuple[str, ...]:
        """``--remediation CHANGES`` for an attempt's units (recomputed, so a relaunch after a
        restart trains with the same changes)."""
        index = RemediationLoop.index(unit.name)
        state = self._remediation_state()
        if index is None or state is None:
            return ()
        plan = state.attempts[index - 1].plan if index <= len(state.attempts) else state.next
        if not isinstance(plan, NextAttempt):
            return ()
        return ("--remediation", json.dumps([c.model_dump(mode="json", by_alias=True)
                                              for c in plan.changes]))

    def _delivered(self) -> TrainingResult | None:
        """The chosen attempt's result when remediation replaced the original model."""
        state = self._remediation_state()
        if state is None or state.chosen == 0:
            return None
        return state.result(state.chosen)

    def _remediation_status(self) -> RemediationStatus | None:
        state = self._remediation_state()
        if state is None:
            return None
        units = st.stage_status(self.status, "training").units
        metric = headline_metric(state.task)
        original = state.original
        rows = [RemediationAttempt(
            attempt=0, unit="train", phase=StagePhase.SUCCEEDED,
            verdict=original.overfitting.verdict if original.overfitting else None,
            validation=delivered_validation(original), test=dict(original.test_metrics),
            test_gain=0.0 if original.test_metrics else None, cost=units["train"].cost)]
        for attempt in state.attempts:
            result = attempt.result
            ok = result is not None and attempt.phase == StagePhase.SUCCEEDED
            cost = sum(r.cost or 0.0 for r in (attempt.augment, attempt.train) if r is not None)
            rows.append(RemediationAttempt(
                attempt=attempt.index, unit=f"remediate-{attempt.index}",
                changes=list(attempt.plan.changes), added=list(attempt.plan.added),
                started_from=attempt.plan.started_from, phase=attempt.phase,
                verdict=(result.overfitting.verdict if result.overfitting else None)
                if ok and result else None,
                validation=delivered_validation(result) if ok and result else {},
                test=dict(result.test_metrics) if ok and result else {},
                test_gain=gain_over_original(original.test_metrics, result.test_metrics,
                                             state.task) if ok and result else None,
                cost=round(cost, 6)))
        chosen = state.chosen
        if isinstance(state.next, Done):
            message = state.next.message
        else:
            message = f"attempt {len(state.attempts)} is training"
        return RemediationStatus(
            metric=metric, attempts=rows, chosen=chosen, test_gain=rows[chosen].test_gain,
            cost=round(sum(r.cost or 0.0 for r in rows[1:]), 6),
            done=isinstance(state.next, Done), message=message)

    def _apply_remediation(self) -> None:
        """The remediation into the overfitting finding; the chosen model's line in 'Best'."""
        finding = self.status.findings.overfitting
        remediation = self._remediation_status()
        if finding is None or remediation is None:
            return
        finding.remediation = remediation
        delivered = self._delivered()
        if delivered is not None:
            self.status.best = st.best_summary(TrainingStatus(
                test_metrics=dict(delivered.test_metrics),
                best_metrics=dict(delivered.best_metrics)))
