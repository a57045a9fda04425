"""The stage engine's record of each work unit: observations folded into ``UnitStatus``.

Each observation of a unit (pods or a process group, as its executor sees them) moves the
unit's record on: running (seconds and progress), succeeded (its typed result filed into the
status), failed (a restart as a new attempt, or the end), or lost (started again; a trial is
replaced). Children of an older attempt are stopped and never counted. ``engine.py`` walks the
stages over these records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ..api.resource import TrainingJob
from ..api.results import (
    AugmentationResult,
    ExplanationResult,
    TrainingResult,
    TuningResult,
    UnitResult,
    parse_result,
)
from ..api.status import Phase, Reason, StagePhase, TrainingJobStatus, UnitStatus
from ..report import compact_result
from . import status as st
from .actions import Context, Event, Observation, Seen, Step, Stop
from .plan import Plan, Stage, WorkUnit

NOT_STARTED = Observation(Seen.NOT_STARTED)
# Result fields kept in files, not in status.
BULKY = ("epoch_seconds", "history_values", "per_sample", "trials_table")


class UnitRecords:
    """One step's view of the job: the plan, the observations, and the status being written."""

    def __init__(self, plan: Plan, job: TrainingJob, observed: Mapping[str, Observation],
                 ctx: Context) -> None:
        self.plan = plan
        self.job = job
        self.spec = job.spec
        self.observed = observed
        self.ctx = ctx
        self.at = st.timestamp(ctx.now)
        status = job.status.model_copy(deep=True) if job.status else TrainingJobStatus()
        status.observed_generation = job.metadata.generation
        self.step = Step(status=status)
        self.status = status
        self.problems: list[str] = []
        self.unavailable: list[str] = []
        """Problems with the spec that a unit found in the data: the job is Invalid."""

    # ----- small helpers --------------------------------------------------------------------

    def event(self, type_: str, reason: str, message: str) -> None:
        self.step.events.append(Event(type_, reason, message))

    def seen(self, name: str) -> Observation:
        return self.observed.get(name, NOT_STARTED)

    def stop(self, name: str, grace: int = 30) -> None:
        if all(s.unit != name for s in self.step.stop):
            self.step.stop.append(Stop(name, grace))

    def fail(self, reason: Reason, message: str) -> None:
        st.finish_job(self.status, Phase.FAILED, reason, message, self.at)
        self.event("Warning", reason, message)

    def units_of(self, stage: Stage) -> dict[str, UnitStatus]:
        return st.stage_status(self.status, stage.name).units

    # ----- what the units did ---------------------------------------------------------------

    def _record_all(self) -> None:
        """Fold every observation into its unit's record; adopt children not yet recorded."""
        for stage in self.plan.stages:
            units = self.units_of(stage)
            for name in self.observed:
                unit = self.plan.unit(name)
                if unit is not None and unit.stage == stage.name and name not in units:
                    seen = self.observed[name]
                    if seen.state in (Seen.RUNNING, Seen.SUCCEEDED, Seen.FAILED):
                        # launched by a step whose status was never written: adopt it
                        units[name] = UnitStatus(attempt=seen.attempt)
                        self._launched(units[name])
            for name, record in units.items():
                unit = self.plan.unit(name)
                if unit is not None:
                    self._record(unit, record, self.seen(name))

    def _launched(self, record: UnitStatus) -> None:
        record.phase = StagePhase.RUNNING
        record.start_time = record.start_time or self.at

    def _record(self, unit: WorkUnit, record: UnitStatus, seen: Observation) -> None:
        if seen.attempt < record.attempt:
            if seen.state in (Seen.RUNNING, Seen.SUCCEEDED, Seen.FAILED, Seen.LOST):
                self.stop(unit.name)  # children of an ended attempt: never counted
            return
        if StagePhase(record.phase).finished:
            if seen.state in (Seen.RUNNING, Seen.LOST) and not unit.service:
                self.stop(unit.name)
            return
        if record.phase == StagePhase.PENDING:
            if seen.state == Seen.LOST:
                self.stop(unit.name)  # a gang launched only in part: remove it, launch it whole
                return
            if seen.state not in (Seen.RUNNING, Seen.SUCCEEDED, Seen.FAILED):
                return
            self._launched(record)  # its launch was not recorded (executor restarted)
        # A unit seen gone keeps the seconds last seen of it.
        record.seconds = round(max(record.seconds or 0.0, record.prior_seconds + seen.seconds), 3)
        if seen.state == Seen.RUNNING:
            self._progress(unit, seen)
        elif seen.state == Seen.SUCCEEDED:
            self._succeeded(unit, record, seen)
        elif seen.state == Seen.FAILED:
            self._failed(unit, record, seen)
        else:
            self._lost(unit, record, seen)

    def _progress(self, unit: WorkUnit, seen: Observation) -> None:
        event = seen.progress or {}
        if unit.kind == "train" and event.get("event") == "epoch":
            st.apply_epoch_event(self.status, event)
        elif unit.kind == "remediate" and event.get("event") == "epoch":
            self.status.progress = (f"{unit.name}: " + st.epoch_progress(
                int(event["epoch"]), int(event.get("epochs") or 0)))
        elif unit.kind == "tune" and event.get("event") == "trial":
            st.apply_trial_event(self.status, self.spec, event, self.spec.tuning.trials)

    def _succeeded(self, unit: WorkUnit, record: UnitStatus, seen: Observation) -> None:
        result = parse_result(unit.kind, seen.result)
        if unit.service:
            self._lost(unit, record, seen)  # a server that exits is restarted
            return
        if result is None or result.status != "succeeded":
            self._failed(unit, record, seen, result,
                         "exited with code 0 without a readable result")
            return
        record.phase = StagePhase.SUCCEEDED
        record.completion_time = self.at
        record.result = _compact(seen.result or {})
        self._tracked(unit, result)
        self._apply(unit, result)

    def _tracked(self, unit: WorkUnit, result: UnitResult | None) -> None:
        """A unit that could not reach its tracking destination: a warning, never a failure."""
        if result is not None and result.tracking_warnings:
            message = st.apply_tracking_warnings(self.status, unit.name,
                                                 result.tracking_warnings, self.at)
            self.event("Warning", Reason.TRACKING_UNAVAILABLE, message)

    def _failed(self, unit: WorkUnit, record: UnitStatus, seen: Observation,
                result: UnitResult | None = None, why: str | None = None) -> None:
        result = result or parse_result(unit.kind, seen.result)
        self._tracked(unit, result)
        detail = why or (f"exited with code {seen.exit_code}"
                         + (f" ({seen.reason})" if seen.reason else ""))
        tail = (seen.output or "").strip().splitlines()[-1:]
        if not tail and result is not None and result.message:
            tail = [result.message]
        message = f"{unit.name} {detail}" + (f": {tail[0][:300]}" if tail else "")
        record.completion_time = self.at
        record.exit_reason = seen.reason
        if result is not None:
            record.result = _compact(seen.result or {})
        if result is not None and result.unavailable:
            record.phase, record.message = StagePhase.FAILED, result.unavailable
            if result.unavailable not in self.unavailable:
                self.unavailable.append(result.unavailable)
            return
        if result is not None and result.problems:
            # The spec cannot work with this data: no retry would help.
            record.phase, record.message = StagePhase.FAILED, "; ".join(result.problems)
            self.problems += [p for p in result.problems if p not in self.problems]
            return
        if unit.kind == "trial":
            # A trial that failed on its own counts as a failed trial; the sweep goes on.
            record.phase, record.message = StagePhase.FAILED, message
            self.event("Warning", "TrialFailed", f"{message}; the sweep goes on")
            return
        if record.restarts < self.spec.run_policy.backoff_limit:
            record.restarts += 1
            self._relaunch(unit, record)
            what = "the whole gang" if unit.world_size > 1 else unit.name
            self.event("Warning", "UnitRestart",
                       f"{message}; restarting {what} from its checkpoint "
                       f"({record.restarts}/{self.spec.run_policy.backoff_limit})")
            return
        record.phase, record.message = StagePhase.FAILED, message
        self.stop(unit.name)  # ranks of the gang still running would wait on the dead one

    def _lost(self, unit: WorkUnit, record: UnitStatus, seen: Observation) -> None:
        """Its children vanished while it ran (deleted, evicted, node gone, server exited)."""
        if unit.kind == "trial":
            self._replace_trial(unit, record, f"{unit.name} lost its pod or process "
                                f"({seen.state}); a new trial replaces it")
            return
        self._relaunch(unit, record)
        self.event("Warning", "UnitLost", f"{unit.name} lost its pod or process; starting it "
                   "again from its checkpoint")

    def _relaunch(self, unit: WorkUnit, record: UnitStatus) -> None:
        record.prior_seconds = record.seconds or 0.0
        record.attempt += 1
        record.phase = StagePhase.PENDING
        record.completion_time = None
        self.stop(unit.name)

    def _replace_trial(self, unit: WorkUnit, record: UnitStatus, message: str) -> None:
        """A trial cut short from outside: failed, not counted, replaced by a new trial (the
        study fails its trial when the sweep is summarized)."""
        record.phase, record.replaced, record.message = StagePhase.FAILED, True, message
        record.completion_time = self.at
        self.stop(unit.name)

    def _apply(self, unit: WorkUnit, result: UnitResult) -> None:
        """A finished unit's result, filed into the status where people read it."""
        if isinstance(result, TrainingResult) and unit.kind == "train":
            st.apply_training_result(self.status, result)
        elif isinstance(result, AugmentationResult) and unit.kind == "augment-merge":
            st.apply_augmentation_result(self.status, result)
        elif isinstance(result, TuningResult):
            st.apply_tuning_result(self.status, self.spec, result)
        elif isinstance(result, ExplanationResult):
            st.apply_explanation_result(self.status, result)

def _compact(result: Mapping[str, object]) -> dict[str, object]:
    """A result as status keeps it: the bulky lists stay in the files in storage."""
    kept = {k: v for k, v in result.items() if k not in BULKY}
    return dict(json.loads(compact_result(kept)))
