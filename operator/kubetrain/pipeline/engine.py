"""The stage engine: from the plan, the status and what was observed, what to do next.

``advance`` is pure (no clock, no processes, no API): both executors call it, the local one
after every line or exit of a unit's processes, the operator on every reconcile. It owns the
order of stages, the groups inside them (augmentation shards at once, cross-validation folds,
a sweep's trials as units), restarts and lost units, suspend and resume, the budget, the
findings and every terminal decision; the executors only start and stop what it says.

What the engine knows between calls lives in the status (``stages.<stage>.units``): each
unit's phase, attempt, seconds and result. An executor that restarts (the operator killed)
loses nothing: children it launched but did not record are adopted by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime

from ..api.metrics import headline_metric
from ..api.resource import TrainingJob
from ..api.results import (
    TrainingResult,
    TrialResult,
    TuningResult,
    UnitResult,
    parse_result,
)
from ..api.status import (
    BestTrial,
    Phase,
    Reason,
    StagePhase,
    StageStatus,
    TrainingJobStatus,
    TrialCounts,
    UnitStatus,
)
from ..findings.cost import format_money
from . import status as st
from .actions import Context, Launch, Observation, Seen, Step
from .costing import job_cost, job_utilization
from .plan import Plan, Stage, TrialSweep, UnitGroup, WorkUnit
from .remediating import TOLERATED_FAILURES, RemediationSteps

# A budget stop is final: the trainer checkpoints at the end of its epoch or is killed.
BUDGET_GRACE_SECONDS = 5


def advance(plan: Plan, job: TrainingJob, observed: Mapping[str, Observation],
            ctx: Context) -> Step:
    """The next step of a job: the new status and the units to launch and stop."""
    return _Engine(plan, job, observed, ctx).run()


def parse_time(value: str | None) -> datetime | None:
    """A status timestamp ("2026-01-01T00:00:00Z") as a datetime; None stays None."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class _Engine(RemediationSteps):
    # ----- the step -------------------------------------------------------------------------

    def run(self) -> Step:
        status = self.status
        if Phase(status.phase).terminal:
            self._stop_observed()  # children a stop missed (the operator restarted)
            self._ttl()
            return self.step
        if self.ctx.problems:
            self._invalid(list(self.ctx.problems))
            return self.step
        if status.phase == Phase.PENDING:
            self._start_job()
        self._record_all()
        if self.problems:  # found by a unit in the data, after the job started
            message = "; ".join(self.problems)
            st.set_condition(status, "Invalid", "True", Reason.INVALID_SPEC, message, self.at)
            return self._end_early(Reason.INVALID_SPEC, message)
        if self.unavailable:  # the data stage could not get the data: no retry would help
            return self._end_early(Reason.DATA_UNAVAILABLE, "; ".join(self.unavailable))
        if self.ctx.interrupted:
            return self._end_early(Reason.INTERRUPTED, "stopped by Ctrl-C; `kubetrain run "
                                   "--resume` continues from the last checkpoint")
        if self._deadline_passed():
            return self._end_early(Reason.DEADLINE_EXCEEDED, "runPolicy.activeDeadlineSeconds "
                                   f"({self.spec.run_policy.active_deadline_seconds}) passed")
        if self.spec.run_policy.suspend:
            self._suspend()
            self._findings()
            return self.step
        if status.phase == Phase.SUSPENDED:
            status.phase = Phase.RUNNING
            st.set_condition(status, "Suspended", "False", Reason.RESUMED, "resumed", self.at)
            self.event("Normal", Reason.RESUMED, "resumed from the last checkpoints")
        done = self._walk()
        self._findings()
        if Phase(status.phase).terminal:
            self._finish()
            return self.step
        if self._over_budget():
            return self.step
        if done:
            st.finish_job(status, Phase.SUCCEEDED, Reason.ALL_STAGES_SUCCEEDED,
                          "all stages finished", self.at)
            self.event("Normal", "Succeeded", "all stages finished")
            self._finish()
        return self.step

    def _invalid(self, problems: list[str]) -> None:
        message = "; ".join(problems)
        st.set_condition(self.status, "Invalid", "True", Reason.INVALID_SPEC, message, self.at)
        self._stop_all()  # a spec edited into an invalid one must not leave pods running
        self.fail(Reason.INVALID_SPEC, message)

    def _start_job(self) -> None:
        status = self.status
        status.phase, status.start_time = Phase.RUNNING, self.at
        for stage in self.plan.stages:
            st.stage_status(status, stage.name)
        names = ", ".join(self.plan.stage_names)
        st.set_condition(status, "Running", "True", Reason.PLANNED, f"stages: {names}", self.at)
        self.event("Normal", Reason.PLANNED, f"stages: {names}")

    # ----- the walk over stages and groups --------------------------------------------------

    def _walk(self) -> bool:
        """Launch what the first unfinished stage needs; True once every stage succeeded."""
        for stage in self.plan.stages:
            record = st.stage_status(self.status, stage.name)
            if StagePhase(record.phase).finished:
                continue
            if record.phase == StagePhase.PENDING:
                st.start_stage(self.status, stage.name, [u.name for u in stage.units], self.at)
                self.event("Normal", Reason.STAGE_RUNNING, f"stage {stage.name} started")
            self.status.current_stage = stage.name
            outcome = self._stage(stage, record)
            if outcome is None:
                return False
            if outcome:
                self._stage_failed(stage, outcome)
                return False
            self._stage_succeeded(stage, record)
        return True

    def _stage(self, stage: Stage, record: StageStatus) -> str | None:
        """'' when the stage succeeded, a message when it failed, None while it runs."""
        for group in stage.groups:
            outcome = self._group(stage, group, record)
            if outcome != "":
                return outcome
        return ""

    def _group(self, stage: Stage, group: UnitGroup, record: StageStatus) -> str | None:
        units = record.units
        if group.sweep is not None:
            members = self._sweep_members(group.sweep, units)
        elif group.remediation is not None:
            members, over = self._remediation_members(group.remediation, units)
            if over:
                return ""
        else:
            members = list(group.units)
        for unit in (*members, *((group.service,) if group.service else ())):
            state = units.get(unit.name)
            if state is not None and state.phase == StagePhase.FAILED and \
                    unit.kind != "trial" and unit.kind not in TOLERATED_FAILURES:
                return state.message or f"{unit.name} failed"

        def finished(unit: WorkUnit) -> bool:
            state = units.get(unit.name)
            if state is None:
                return False
            # A failed trial is finished (counted, or replaced), a failed remediation attempt
            # too (remediation ends with the best model so far); other units must succeed.
            return state.phase == StagePhase.SUCCEEDED or (
                (unit.kind == "trial" or unit.kind in TOLERATED_FAILURES)
                and StagePhase(state.phase).finished)

        if members and all(finished(u) for u in members):
            return ""
        self._serve(stage)
        running = sum(1 for u in members if units.get(u.name, UnitStatus()).phase
                      == StagePhase.RUNNING)
        for unit in members:
            state = units.setdefault(unit.name, UnitStatus())
            # A relaunch waits until the children of the attempt before it are gone.
            if state.phase == StagePhase.PENDING and running < group.limit and \
                    self.seen(unit.name).state == Seen.NOT_STARTED:
                self._launch(unit, state)
                running += 1
        if group.sweep is not None:  # the counts with the trials just launched
            self._sweep_status(group.sweep, {i: units[u.name] for u in members
                                             if (i := TrialSweep.index(u.name)) is not None})
        return None

    def _sweep_members(self, sweep: TrialSweep, units: dict[str, UnitStatus]) -> list[WorkUnit]:
        """The trials so far, plus new ones while fewer than the target are counted."""
        trials = {i: r for n, r in units.items() if (i := TrialSweep.index(n)) is not None}
        counted = [r for r in trials.values()
                   if StagePhase(r.phase).finished and not r.replaced]
        active = [r for r in trials.values() if not StagePhase(r.phase).finished]
        wanted = min(sweep.parallelism, sweep.target - len(counted)) - len(active)
        next_index = max(trials, default=-1) + 1
        for _ in range(max(0, wanted)):
            units[f"trial-{next_index}"] = UnitStatus()
            trials[next_index] = units[f"trial-{next_index}"]
            next_index += 1
        self._sweep_status(sweep, trials)
        return [sweep.unit(i) for i in sorted(trials)]

    def _sweep_status(self, sweep: TrialSweep, trials: Mapping[int, UnitStatus]) -> None:
        if self.status.tuning is not None and self.status.tuning.study is not None:
            return  # the summary has spoken: the study's own counts and best trial stand
        counts = TrialCounts(total=sweep.target)
        best: BestTrial | None = None
        maximize = self.spec.tuning.metric_objective.direction == "maximize"
        for record in trials.values():
            if record.phase == StagePhase.RUNNING:
                counts.running += 1
            if not StagePhase(record.phase).finished or record.replaced:
                continue
            result = parse_result("trial", record.result)
            state = result.state if isinstance(result, TrialResult) else "failed"
            if state == "complete":
                counts.complete += 1
            elif state == "pruned":
                counts.pruned += 1
            else:
                counts.failed += 1
            if not (isinstance(result, TrialResult) and state == "complete"
                    and result.value is not None and result.trial is not None):
                continue
            if best is None or (result.value > best.value if maximize
                                else result.value < best.value):
                best = BestTrial(trial=result.trial, params=result.params, value=result.value)
        st.apply_sweep(self.status, self.spec, counts, best, sweep.target)

    def _serve(self, stage: Stage) -> None:
        """The stage's service (the study server) runs while the stage does."""
        for group in stage.groups:
            if group.service is not None:
                record = self.units_of(stage).setdefault(group.service.name, UnitStatus())
                if record.phase == StagePhase.PENDING and \
                        self.seen(group.service.name).state == Seen.NOT_STARTED:
                    self._launch(group.service, record)

    def _launch(self, unit: WorkUnit, record: UnitStatus) -> None:
        args: tuple[str, ...] = ()
        best = self.status.tuning.best if self.status.tuning else None
        if unit.stage == "training" and best is not None and best.params and \
                unit.kind != "remediate-augment":
            # The best trial's hyperparameters feed the final training (and its folds), and
            # remediation starts from them.
            args = ("--params", json.dumps(best.params))
        args += self._remediation_args(unit)
        delivered = self._delivered() if unit.stage == "explanation" else None
        if delivered is not None and delivered.model:
            args += ("--model", delivered.model)  # explain the model the job delivers
        self.step.launch.append(Launch(unit, record.attempt, args))
        self._launched(record)
        stage = st.stage_status(self.status, unit.stage)
        if unit.name not in stage.jobs:
            stage.jobs.append(unit.name)

    def _stage_succeeded(self, stage: Stage, record: StageStatus) -> None:
        for group in stage.groups:
            if group.service is not None:
                self.stop(group.service.name)
                service = record.units.get(group.service.name)
                if service is not None:
                    service.phase, service.completion_time = StagePhase.SUCCEEDED, self.at
        if stage.name == "training":
            self._cross_validation(record)
        count = sum(1 for r in record.units.values() if r.phase == StagePhase.SUCCEEDED)
        st.finish_stage(self.status, stage.name, StagePhase.SUCCEEDED,
                        f"{count} work unit(s) succeeded", self.at)
        self.event("Normal", Reason.STAGE_SUCCEEDED, f"stage {stage.name} succeeded")

    def _stage_failed(self, stage: Stage, message: str) -> None:
        st.finish_stage(self.status, stage.name, StagePhase.FAILED, message, self.at)
        self._stop_all()
        reason = (Reason.BACKOFF_LIMIT_EXCEEDED if stage.name == "training"
                  else Reason.WORK_UNIT_FAILED)
        self.fail(reason, message)

    def _cross_validation(self, record: StageStatus) -> None:
        folds = [r for n, u in sorted(record.units.items()) if n.startswith("fold-")
                 and isinstance(r := parse_result("fold", u.result), TrainingResult)]
        if folds and self.status.training is not None:
            self.status.training.cross_validation = st.cross_validation_summary(
                folds, headline_metric(folds[0].task))

    # ----- stopping -------------------------------------------------------------------------

    def _running_units(self) -> list[tuple[str, UnitStatus]]:
        return [(name, record) for stage in self.plan.stages
                for name, record in self.units_of(stage).items()
                if record.phase == StagePhase.RUNNING]

    def _stop_all(self, grace: int = 30) -> None:
        """Stop every unit that runs, and any child the records do not know."""
        self.step.launch.clear()  # nothing launched in this step may start either
        for name, record in self._running_units():
            unit = self.plan.unit(name)
            if unit is not None and unit.kind == "trial":
                self._replace_trial(unit, record, f"{name} stopped with the job")
            else:
                record.phase, record.completion_time = StagePhase.FAILED, self.at
                record.message = "stopped with the job"
        self._stop_observed(grace)

    def _stop_observed(self, grace: int = 30) -> None:
        """Stop every child seen running, recorded or not; the report unit runs on."""
        report = self.plan.report.name if self.plan.report else None
        for name, seen in self.observed.items():
            if seen.state in (Seen.RUNNING, Seen.LOST) and name != report:
                self.stop(name, grace)

    def _end_early(self, reason: Reason, message: str, *, stage_message: str | None = None,
                   grace: int = 30) -> Step:
        """End the job before its stages did: stop everything, fail the running stage."""
        stage = self.status.current_stage
        self._stop_all(grace)
        if stage is not None:
            st.finish_stage(self.status, stage, StagePhase.FAILED, stage_message or message,
                            self.at)
        self._findings()
        self.fail(reason, message)
        self._finish()
        return self.step

    def _suspend(self) -> None:
        """Remove running children; on resume each unit starts again from its checkpoint."""
        stopped = 0
        for name, record in self._running_units():
            unit = self.plan.unit(name)
            if unit is None:
                continue
            if unit.kind == "trial":
                self._replace_trial(unit, record, f"{name} stopped by a suspend")
            else:
                self._relaunch(unit, record)
            stopped += 1
        self._stop_observed()
        if self.status.phase != Phase.SUSPENDED:
            self.status.phase = Phase.SUSPENDED
            st.set_condition(self.status, "Suspended", "True", Reason.SUSPENDED,
                             "runPolicy.suspend is true; running work stopped", self.at)
            self.event("Normal", Reason.SUSPENDED, f"stopped {stopped} running unit(s)")

    def _deadline_passed(self) -> bool:
        deadline = self.spec.run_policy.active_deadline_seconds
        started = parse_time(self.status.start_time)
        return bool(deadline and started
                    and (self.ctx.now - started).total_seconds() > deadline)

    def _ttl(self) -> None:
        ttl = self.spec.run_policy.ttl_seconds_after_finished
        finished = parse_time(self.status.completion_time)
        if ttl is not None and finished is not None and \
                (self.ctx.now - finished).total_seconds() >= ttl:
            self.step.expired = True

    # ----- findings, budget, the end --------------------------------------------------------

    def _result(self, name: str) -> UnitResult | None:
        unit = self.plan.unit(name)
        if unit is None:
            return None
        record = st.stage_status(self.status, unit.stage).units.get(name)
        return parse_result(unit.kind, record.result) if record else None

    def _findings(self) -> None:
        train = self._result("train")
        summary = self._result("tune-summary") or self._result("tune")
        train = train if isinstance(train, TrainingResult) else None
        if train is not None and train.overfitting is not None:
            st.apply_overfitting(self.status, train.overfitting, self.at)
        self.status.findings.cost = job_cost(
            self.plan, self.spec, self.status, train,
            summary if isinstance(summary, TuningResult) else None)
        self.status.findings.utilization = job_utilization(self.plan, self.spec, self.status)
        cost = self.status.findings.cost
        self.status.cost = format_money(cost.total, cost.currency) if cost else None
        self._apply_remediation()  # after the cost: each attempt's cost is in its record

    def _over_budget(self) -> bool:
        budget = self.spec.findings.cost.budget
        cost = self.status.findings.cost
        if budget is None or cost is None or cost.total < budget.max_cost:
            return False
        message = f"cost {cost.total:.6f} reached budget.maxCost {budget.max_cost}"
        condition = next((c for c in self.status.conditions if c.type == "BudgetExceeded"), None)
        if condition is None:
            self.event("Warning", Reason.BUDGET_EXCEEDED, message)
        st.set_condition(self.status, "BudgetExceeded", "True", Reason.BUDGET_EXCEEDED, message,
                         self.at)
        if budget.action != "stop":
            return False
        self._end_early(Reason.BUDGET_EXCEEDED, message + "; further work stopped",
                        stage_message="stopped: budget exceeded", grace=BUDGET_GRACE_SECONDS)
        return True

    def _finish(self) -> None:
        """The job has ended: artifacts in status, and the report unit writes report.md."""
        storage = self.ctx.storage.rstrip("/")
        artifacts = self.status.artifacts
        train = self._result("train")
        if isinstance(train, TrainingResult):
            if train.model:
                artifacts["model"] = train.model
            delivered = self._delivered()
            if delivered is not None and delivered.model:
                artifacts["originalModel"], artifacts["model"] = artifacts.get(
                    "model", ""), delivered.model
            if train.history:
                artifacts["history"] = train.history
                artifacts["lossCurve"] = f"{storage}/loss-curve.png"
        artifacts["report"] = f"{storage}/report.md"
        artifacts["status"] = f"{storage}/status.yaml"
        if self.plan.report is not None:
            final = self.job.model_copy(update={"status": self.status}).to_manifest()
            self.step.launch.append(Launch(self.plan.report, 0,
                                           status_file=json.dumps(final["status"])))


def resumed(status: TrainingJobStatus) -> TrainingJobStatus:
    """A stopped run's status, ready to continue (``kubetrain run --resume``): finished units
    stay finished, the others start again from their checkpoints, a sweep keeps its trials."""
    status = status.model_copy(deep=True)
    if status.phase == Phase.PENDING:
        return status
    status.phase, status.completion_time = Phase.RUNNING, None
    status.conditions = [c for c in status.conditions if c.type not in ("Failed", "Succeeded")]
    for stage in status.stages.values():
        if stage.phase == StagePhase.FAILED:
            stage.phase, stage.completion_time = StagePhase.RUNNING, None
        for name, record in stage.units.items():
            if record.phase == StagePhase.RUNNING and TrialSweep.index(name) is not None:
                record.phase, record.replaced = StagePhase.FAILED, True
            elif record.phase == StagePhase.RUNNING or (
                    record.phase == StagePhase.FAILED and TrialSweep.index(name) is None):
                record.phase, record.completion_time = StagePhase.PENDING, None
                record.prior_seconds, record.attempt = record.seconds or 0.0, record.attempt + 1
    return status
