"""The reconcile decision: from a TrainingJob and what exists, what to create, delete and report.

One pure function, called on create, resume, spec change and a timer for running jobs. It is
idempotent: children have fixed names, a decision only creates what is missing, and every
outcome it learns from pods (results, restarts) is written to status before it is relied on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..api.resource import TrainingJob
from ..api.status import StageStatus, TrainingJobStatus, UnitStatus
from ..pipeline import status as st
from ..pipeline.plan import Plan, Stage, WorkUnit, plan
from . import builders as b
from .findings import finish_findings
from .observe import Observed, PodView, parse_time
from .validate import semantic_problems

TERMINAL = ("Succeeded", "Failed")
# Result keys dropped before a summary goes into status: the files in storage keep them.
BULKY = ("epoch_seconds", "history", "trials_table", "per_sample")


@dataclass
class Decision:
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)
    """(kind, name) of children to delete (Pod, Job, Service)."""
    status: TrainingJobStatus = field(default_factory=TrainingJobStatus)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type Normal|Warning, reason, message) for Kubernetes Events."""
    delete_job: bool = False
    """ttlSecondsAfterFinished passed: delete the TrainingJob itself."""


def _compact(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in BULKY}


def _pod_seconds(pods: list[PodView], now: datetime) -> float:
    total = 0.0
    for pod in pods:
        if pod.started is not None:
            total += ((pod.finished or now) - pod.started).total_seconds()
    return total


class _Reconciler:
    def __init__(self, job: TrainingJob, observed: Observed, settings: b.OperatorSettings,
                 now: datetime) -> None:
        self.job = job
        self.spec = job.spec
        self.observed = observed
        self.settings = settings
        self.now = now
        self.at = st.timestamp(now)
        self.decision = Decision(status=(job.status.model_copy(deep=True) if job.status
                                         else TrainingJobStatus()))
        self.status = self.decision.status
        self.plan: Plan = plan(job.spec)

    # ----- helpers --------------------------------------------------------------------------

    def event(self, kind: str, reason: str, message: str) -> None:
        self.decision.events.append((kind, reason, message))

    def ensure(self, obj: dict[str, Any]) -> None:
        """Create a child unless the observation shows it (creating it twice is harmless)."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        existing = {"Pod": {p.name for p in self.observed.pods}, "Job": self.observed.jobs,
                    "Service": self.observed.services,
                    "ConfigMap": self.observed.config_maps}[kind]
        if name not in existing:
            self.decision.create.append(obj)

    def unit_status(self, stage: StageStatus, unit: WorkUnit) -> UnitStatus:
        return stage.units.setdefault(unit.name, UnitStatus())

    def fail(self, reason: str, message: str) -> None:
        st.finish_job(self.status, "Failed", reason, message, self.at)
        self.event("Warning", reason, message)

    # ----- the decision ---------------------------------------------------------------------

    def run(self) -> Decision:
        status = self.status
        status.observed_generation = self.job.metadata.generation
        if status.phase in TERMINAL:
            self._ttl()
            return self.decision
        problems = semantic_problems(self.job, self.settings)
        if problems:
            message = "; ".join(problems)
            st.set_condition(status, "Invalid", "True", "InvalidSpec", message, self.at)
            self._stop_all()  # a spec edited into an invalid one must not leave pods running
            self.fail("InvalidSpec", message)
            return self.decision
        if status.phase == "Pending":
            status.phase, status.start_time = "Running", self.at
            for stage in self.plan.stages:
                st.stage_status(status, stage.name)
            st.set_condition(status, "Running", "True", "Planned",
                             "stages: " + ", ".join(self.plan.stage_names), self.at)
            self.event("Normal", "Planned", "stages: " + ", ".join(self.plan.stage_names))
        if self._deadline_passed():
            self._stop_all()
            self.fail("DeadlineExceeded", "runPolicy.activeDeadlineSeconds "
                      f"({self.spec.run_policy.active_deadline_seconds}) passed")
            finish_findings(self.job, status, self.now)
            return self.decision
        if self.spec.run_policy.suspend:
            self._suspend()
            return self.decision
        if status.phase == "Suspended":
            status.phase = "Running"
            st.set_condition(status, "Suspended", "False", "StageRunning", "resumed", self.at)
            self.event("Normal", "Resumed", "resumed from the last checkpoint")
        self.ensure(b.job_config_map(self.job))
        for stage in self.plan.stages:
            stage_status = st.stage_status(status, stage.name)
            if stage_status.phase in ("Succeeded", "NotAvailable", "Skipped"):
                continue
            if not stage.available:
                st.finish_stage(status, stage.name, "NotAvailable", stage.message, self.at)
                self.event("Warning", "StageNotAvailable", stage.message)
                continue
            if stage_status.phase == "Pending":
                st.start_stage(status, stage.name, [u.name for u in stage.units], self.at)
                self.event("Normal", "StageRunning", f"stage {stage.name} started")
            status.current_stage = stage.name
            outcome = self._run_stage(stage, stage_status)
            finish_findings(self.job, status, self.now)
            if outcome == "failed":
                return self.decision
            if outcome == "running":
                if self._budget_exceeded():
                    return self.decision
                return self.decision
            st.finish_stage(status, stage.name, "Succeeded",
                            f"{len(stage.units)} work unit(s) succeeded", self.at)
            self.event("Normal", "StageSucceeded", f"stage {stage.name} succeeded")
        finish_findings(self.job, status, self.now)
        st.finish_job(status, "Succeeded", "AllStagesSucceeded", "all stages finished", self.at)
        self.event("Normal", "Succeeded", "all stages finished")
        return self.decision

    # ----- stages ---------------------------------------------------------------------------

    def _run_stage(self, stage: Stage, stage_status: StageStatus) -> str:
        """Advance a stage's units in order: 'done', 'running' or 'failed'."""
        if stage.name == "tuning" and self.spec.tuning.backend == "optuna":
            return self._run_tuning(stage, stage_status)
        for unit in stage.units:
            unit_status = self.unit_status(stage_status, unit)
            if unit_status.phase == "Succeeded":
                continue
            outcome = self._run_unit(stage, unit, unit_status)
            if outcome != "done":
                return outcome
        return "done"

    def _run_tuning(self, stage: Stage, stage_status: StageStatus) -> str:
        """A study server, up to `parallelism` trial pods until `trials` finished, a summary.

        A trial pod that fails counts as a failed trial and the sweep goes on; the summary
        step marks the study's trials that lost their pods as failed.
        """
        for obj in b.study_server(self.job, self.settings):
            self.ensure(obj)
        trial_pods = {p.unit: p for p in self.observed.pods
                      if p.role == "trial" and not p.deleting}
        for name, pod in trial_pods.items():
            unit_status = stage_status.units.setdefault(name, UnitStatus())
            if unit_status.phase in ("Succeeded", "Failed"):
                continue
            unit_status.start_time = unit_status.start_time or self.at
            unit_status.phase = "Running"
            if pod.done:
                result = pod.result or {}
                unit_status.phase = "Succeeded" if pod.phase == "Succeeded" else "Failed"
                unit_status.completion_time = self.at
                unit_status.seconds = _pod_seconds([pod], self.now)
                unit_status.result = _compact(result) if result else {
                    "state": "failed", "exit_code": pod.exit_code, "reason": pod.reason}
                if pod.phase == "Failed":
                    self.event("Warning", "TrialFailed",
                               f"trial pod {pod.name} failed (exit code {pod.exit_code}, "
                               f"{pod.reason}); the sweep goes on")
        trials = {n: u for n, u in stage_status.units.items() if n.startswith("trial-")}
        finished = [u for u in trials.values() if u.phase in ("Succeeded", "Failed")]
        running = [n for n, u in trials.items() if u.phase == "Running"]
        target = self.spec.tuning.trials
        if len(finished) < target:
            index = 0
            while len(running) < self.spec.tuning.parallelism and len(trials) < target:
                while f"trial-{index}" in trials:
                    index += 1
                self.ensure(b.trial_pod(self.job, self.settings, index))
                trials[f"trial-{index}"] = stage_status.units.setdefault(
                    f"trial-{index}", UnitStatus(phase="Running", start_time=self.at))
                running.append(f"trial-{index}")
            self._trial_counts(trials)
            return "running"
        self._trial_counts(trials)
        summary = b.tuning_work_unit(self.job, b.SUMMARY_UNIT)
        assert summary is not None
        unit_status = self.unit_status(stage_status, summary)
        self.ensure(b.tuning_summary_job(self.job, self.settings))
        unit_status.phase = "Running"
        pods = [p for p in self.observed.unit_pods(b.SUMMARY_UNIT) if not p.deleting]
        done = [p for p in pods if p.phase == "Succeeded"]
        if done:
            self._unit_succeeded(summary, unit_status, done[0], pods)
            # The sweep is over: the study server has served its purpose.
            self.decision.delete.append(("Pod", b.child_name(self.job.metadata.name,
                                                             b.STUDY_UNIT)))
            return "done"
        if len([p for p in pods if p.phase == "Failed"]) > self.spec.run_policy.backoff_limit:
            self._unit_failed(stage, summary, unit_status, pods[-1])
            return "failed"
        return "running"

    def _trial_counts(self, trials: dict[str, UnitStatus]) -> None:
        """Live trial counts in status.tuning from the trial pods' outcomes."""
        counts = {"total": self.spec.tuning.trials, "running": 0, "complete": 0, "pruned": 0,
                  "failed": 0}
        for unit_status in trials.values():
            if unit_status.phase == "Running":
                counts["running"] += 1
            elif unit_status.phase in ("Succeeded", "Failed"):
                state = str(unit_status.result.get("state", "failed"))
                counts[state if state in ("complete", "pruned") else "failed"] += 1
        st.apply_trial_event(self.status, self.spec, {"counts": counts})

    def _unit_objects(self, unit: WorkUnit) -> list[dict[str, Any]]:
        extra: list[str] = []
        if unit.stage == "training" and self.status.tuning and self.status.tuning.best:
            extra = b.params_args(self.status.tuning.best.params)
        if unit.stage == "training":
            return [*b.gang_services(self.job, unit),
                    *b.gang_pods(self.job, unit, self.settings, extra)]
        return [b.batch_job(self.job, unit, self.settings, extra)]

    def _run_unit(self, stage: Stage, unit: WorkUnit, unit_status: UnitStatus) -> str:
        pods = self.observed.unit_pods(unit.name)
        live = [p for p in pods if not p.deleting]
        if unit.stage == "training":
            return self._run_gang(unit, unit_status, pods, live)
        # A Job retries its own pod up to backoffLimit; the unit is done when a pod succeeded.
        for obj in self._unit_objects(unit):
            self.ensure(obj)
        unit_status.phase = "Running"
        unit_status.start_time = unit_status.start_time or self.at
        succeeded = [p for p in live if p.phase == "Succeeded"]
        failed = [p for p in live if p.phase == "Failed"]
        progress = self.observed.progress.get(unit.name) or {}
        if unit.stage == "tuning" and progress.get("event") == "trial":
            st.apply_trial_event(self.status, self.spec, progress)
        if succeeded:
            self._unit_succeeded(unit, unit_status, succeeded[0], pods)
            return "done"
        if len(failed) > self.spec.run_policy.backoff_limit:
            pod = failed[-1]
            self._unit_failed(stage, unit, unit_status, pod)
            return "failed"
        return "running"

    def _run_gang(self, unit: WorkUnit, unit_status: UnitStatus, pods: list[PodView],
                  live: list[PodView]) -> str:
        if any(p.deleting for p in pods):
            return "running"  # a restart is under way: wait until the old gang is gone
        failed = [p for p in live if p.phase == "Failed"]
        if failed:
            pod = failed[0]
            if unit_status.restarts >= self.spec.run_policy.backoff_limit:
                # The job is finished: ranks still running would wait on the dead peer forever.
                for p in live:
                    if not p.done:
                        self.decision.delete.append(("Pod", p.name))
                stage_status = st.stage_status(self.status, unit.stage)
                self._unit_failed(self.plan.stage(unit.stage) or Stage(unit.stage), unit,
                                  unit_status, pod)
                del stage_status
                return "failed"
            # One rank failed: the whole gang restarts from the last checkpoint.
            unit_status.restarts += 1
            unit_status.seconds = (unit_status.seconds or 0.0) + _pod_seconds(live, self.now)
            for p in live:
                self.decision.delete.append(("Pod", p.name))
            self.event("Warning", "GangRestart",
                       f"pod {pod.name} failed (exit code {pod.exit_code}, {pod.reason}); "
                       f"restarting {unit.name} from its checkpoint "
                       f"({unit_status.restarts}/{self.spec.run_policy.backoff_limit})")
            return "running"
        for obj in self._unit_objects(unit):
            self.ensure(obj)
        if unit_status.phase != "Running":
            unit_status.phase = "Running"
            unit_status.start_time = unit_status.start_time or self.at
        if live and len(live) == unit.nodes and all(p.phase == "Succeeded" for p in live):
            self._unit_succeeded(unit, unit_status, live[0], live)
            return "done"
        progress = self.observed.progress.get(unit.name)
        if unit.name == "train" and progress and progress.get("event") == "epoch":
            st.apply_epoch_event(self.status, progress)
        return "running"

    def _unit_succeeded(self, unit: WorkUnit, unit_status: UnitStatus, pod: PodView,
                        pods: list[PodView]) -> None:
        result = pod.result or {}
        unit_status.phase = "Succeeded"
        unit_status.completion_time = self.at
        unit_status.seconds = (unit_status.seconds or 0.0) + _pod_seconds(pods, self.now)
        unit_status.result = _compact(result)
        if unit.name == "train":
            st.apply_training_result(self.status, result)
        elif unit.name == "augment-merge":
            st.apply_augmentation_result(self.status, result)
        elif unit.name in ("tune", b.SUMMARY_UNIT):
            st.apply_tuning_result(self.status, self.spec, result)
        elif unit.name == "explain":
            st.apply_explanation_result(self.status, result)
        if unit.stage == "training":
            self._cross_validation()

    def _unit_failed(self, stage: Stage, unit: WorkUnit, unit_status: UnitStatus,
                     pod: PodView) -> None:
        unit_status.phase = "Failed"
        unit_status.completion_time = self.at
        detail = (pod.message or "").strip().splitlines()[-1:] if pod.message else []
        message = (f"pod {pod.name} of {unit.name} failed with exit code {pod.exit_code}"
                   f" ({pod.reason or 'Error'})" + (f": {detail[0][:300]}" if detail else ""))
        st.finish_stage(self.status, stage.name, "Failed", message, self.at)
        reason = "BackoffLimitExceeded" if unit.stage == "training" else "WorkUnitFailed"
        self.fail(reason, message)

    def _cross_validation(self) -> None:
        stage = self.status.stages.get("training")
        if stage is None or self.status.training is None:
            return
        folds = [u.result for name, u in sorted(stage.units.items())
                 if name.startswith("fold-") and u.phase == "Succeeded" and u.result]
        if folds and all("best_metrics" in f for f in folds):
            task = folds[0].get("task", "classification")
            self.status.training.cross_validation = st.cross_validation_summary(
                folds, st.headline_metric(task))

    # ----- run policy -----------------------------------------------------------------------

    def _deadline_passed(self) -> bool:
        deadline = self.spec.run_policy.active_deadline_seconds
        if not deadline or not self.status.start_time:
            return False
        started = parse_time(self.status.start_time)
        return started is not None and (self.now - started).total_seconds() > deadline

    def _stop_all(self) -> None:
        for pod in self.observed.pods:
            if not pod.done and not pod.deleting:
                self.decision.delete.append(("Pod", pod.name))
        for job in self.observed.jobs:
            self.decision.delete.append(("Job", job))

    def _suspend(self) -> None:
        """Remove running pods; the stage continues from its checkpoint on resume."""
        running = [p for p in self.observed.pods if not p.done and not p.deleting]
        for pod in running:
            self.decision.delete.append(("Pod", pod.name))
        for job in self.observed.jobs:
            unit = job[len(self.job.metadata.name) + 1:]
            stage = next((s for s in self.status.stages.values()
                          if unit in s.units and s.units[unit].phase != "Succeeded"), None)
            if stage is not None:
                self.decision.delete.append(("Job", job))
        if self.status.phase != "Suspended":
            self.status.phase = "Suspended"
            st.set_condition(self.status, "Suspended", "True", "Suspended",
                             "runPolicy.suspend is true; running pods removed", self.at)
            self.event("Normal", "Suspended", f"removed {len(running)} running pod(s)")

    def _budget_exceeded(self) -> bool:
        cost = self.status.findings.cost
        budget = self.spec.findings.cost.budget
        if budget is None or cost is None or cost.total < budget.max_cost:
            return False
        message = f"cost {cost.total:.6f} reached budget.maxCost {budget.max_cost}"
        st.set_condition(self.status, "BudgetExceeded", "True", "BudgetExceeded", message,
                         self.at)
        if budget.action != "stop":
            return False
        self.decision.create.clear()  # launch nothing more: this stage's objects included
        self._stop_all()
        self.fail("BudgetExceeded", message + "; further work stopped")
        return True

    def _ttl(self) -> None:
        ttl = self.spec.run_policy.ttl_seconds_after_finished
        if ttl is None or not self.status.completion_time:
            return
        finished = parse_time(self.status.completion_time)
        if finished is not None and (self.now - finished).total_seconds() >= ttl:
            self.decision.delete_job = True


def reconcile(job: TrainingJob, observed: Observed, settings: b.OperatorSettings,
              now: datetime) -> Decision:
    """The one reconcile decision for a TrainingJob (pure: no API calls, no clock)."""
    return _Reconciler(job, observed, settings, now).run()
