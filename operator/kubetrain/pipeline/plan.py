"""Pure planning: which stages run, in which order, as which work units.

Both executors take this plan: the local one starts each work unit as a process group (torchrun
for DDP), the operator starts each as pods. A stage is a sequence of groups; the units of a
group may run at once (up to the group's limit), and a group starts when the one before it
succeeded. A tuning sweep's trials are units too, made on demand from a template, each with
its own sampler seed. The stage engine (``engine.py``) walks this plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..api.quantity import parse_cpu, parse_memory_gib
from ..api.results import UnitKind
from ..api.spec import TrainingJobSpec
from ..tuning.space import grid_size

STAGE_ORDER = ("data", "augmentation", "tuning", "training", "explanation")
REPORT_UNIT = "report"
STUDY_UNIT = "study"
SUMMARY_UNIT = "tune-summary"
TRIAL_PREFIX = "trial-"
STUDY_PORT = 13000


@dataclass(frozen=True)
class WorkUnit:
    """One process group (one pod per node on Kubernetes) running a workload module."""

    name: str
    stage: str
    kind: UnitKind
    module: str
    args: tuple[str, ...] = ()
    nodes: int = 1
    nproc_per_node: int = 1
    gpus_per_node: int = 0
    cpu: float = 1.0
    memory_gib: float = 2.0
    service: bool = False
    """A helper that serves its group while it runs (the study server); it never finishes."""
    study_client: bool = False
    """Reaches the sweep's study server: the executor adds ``--study-server ADDRESS``."""
    sized: bool = False
    """Its requests come from training.resources (the units that do the job's work), not a
    fixed helper's: what findings.utilization judges."""
    image: str | None = None
    """The unit's own image (training.image: the training stage and the trials); None: the
    job's image (spec.image), else the operator's worker image."""

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node


@dataclass(frozen=True)
class TrialSweep:
    """The trials of a sweep: units ``trial-0``, ``trial-1``, ... made from one template."""

    target: int
    """Trials that must finish (complete, pruned or failed by their own error)."""
    parallelism: int
    template: WorkUnit
    seed: int
    """The job's seed; trial i draws with ``seed * 1000 + i`` (parallel trials differ)."""

    def unit(self, index: int) -> WorkUnit:
        return replace(self.template, name=f"{TRIAL_PREFIX}{index}",
                       args=(*self.template.args, "--sampler-seed",
                             str(trial_seed(self.seed, index))))

    @staticmethod
    def index(name: str) -> int | None:
        """The trial index of a unit name, None when it is not a trial."""
        rest = name[len(TRIAL_PREFIX):]
        return int(rest) if name.startswith(TRIAL_PREFIX) and rest.isdigit() else None


def trial_seed(seed: int, index: int) -> int:
    """The one seed formula of a trial's sampler: trials started together never draw alike."""
    return seed * 1000 + index


REMEDIATE_PREFIX = "remediate-"
AUGMENT_SUFFIX = "-augment"


@dataclass(frozen=True)
class RemediationLoop:
    """Retrainings of findings.overfitting.action: remediate, made one at a time as the
    findings ask: attempt k is ``remediate-k`` (a training unit like ``train``), preceded by
    ``remediate-k-augment`` when it switches augmentation on."""

    max_attempts: int
    template: WorkUnit
    augment: WorkUnit

    def unit(self, attempt: int) -> WorkUnit:
        name = f"{REMEDIATE_PREFIX}{attempt}"
        return replace(self.template, name=name, args=("--unit", name, *self.template.args))

    def augment_unit(self, attempt: int) -> WorkUnit:
        name = f"{REMEDIATE_PREFIX}{attempt}{AUGMENT_SUFFIX}"
        return replace(self.augment, name=name, args=("--unit", name, *self.augment.args))

    @staticmethod
    def index(name: str) -> int | None:
        """The attempt of a remediation unit's name (either unit), None for other units."""
        rest = name[len(REMEDIATE_PREFIX):].removesuffix(AUGMENT_SUFFIX)
        return int(rest) if name.startswith(REMEDIATE_PREFIX) and rest.isdigit() else None

    def member(self, name: str) -> WorkUnit | None:
        attempt = self.index(name)
        if attempt is None:
            return None
        return self.augment_unit(attempt) if name.endswith(AUGMENT_SUFFIX) else self.unit(attempt)


@dataclass(frozen=True)
class UnitGroup:
    """Units that run at once (at most ``limit``), after the group before them."""

    units: tuple[WorkUnit, ...] = ()
    limit: int = 1
    sweep: TrialSweep | None = None
    service: WorkUnit | None = None
    remediation: RemediationLoop | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    groups: tuple[UnitGroup, ...] = ()

    @property
    def units(self) -> tuple[WorkUnit, ...]:
        """The units known before the stage runs (trials are made as the sweep goes)."""
        return tuple(u for g in self.groups
                     for u in (*((g.service,) if g.service else ()), *g.units))


@dataclass(frozen=True)
class Plan:
    stages: tuple[Stage, ...] = field(default_factory=tuple)
    report: WorkUnit | None = None
    """Writes report.md and the loss curve to the job's storage once the job has ended."""

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def unit(self, name: str) -> WorkUnit | None:
        """Any unit of the plan by name, trials included."""
        if self.report is not None and name == self.report.name:
            return self.report
        for stage in self.stages:
            for group in stage.groups:
                if group.sweep is not None and TrialSweep.index(name) is not None:
                    return group.sweep.unit(TrialSweep.index(name) or 0)
                if group.remediation is not None and group.remediation.member(name):
                    return group.remediation.member(name)
                for unit in (*((group.service,) if group.service else ()), *group.units):
                    if unit.name == name:
                        return unit
        return None


def target_trials(spec: TrainingJobSpec) -> int:
    """Trials the sweep runs: tuning.trials, or fewer when a grid has fewer points."""
    if spec.tuning.sampler == "grid":
        return min(spec.tuning.trials, grid_size(spec.tuning.search_space))
    return spec.tuning.trials


def _enabled(spec: TrainingJobSpec, stage: str) -> bool:
    if stage == "data":
        return spec.dataset.remote
    if stage == "augmentation":
        return spec.augmentation.enabled
    if stage == "tuning":
        return spec.tuning.enabled
    if stage == "explanation":
        return spec.explanation.enabled
    return True


def training_module(spec: TrainingJobSpec) -> str:
    """The built-in trainer, or the runner of the user's program (training.command)."""
    return "kubetrain.workloads.script" if spec.custom else "kubetrain.workloads.train"


def _training(spec: TrainingJobSpec) -> Stage:
    res = spec.training.resources
    cpu, memory = parse_cpu(res.cpu), parse_memory_gib(res.memory)

    def unit(name: str, kind: UnitKind, *args: str) -> WorkUnit:
        return WorkUnit(name=name, stage="training", kind=kind, module=training_module(spec),
                        args=("--unit", name, *args), nodes=res.nodes,
                        nproc_per_node=res.workers_per_node, gpus_per_node=res.gpus_per_node,
                        cpu=cpu, memory_gib=memory, image=spec.training.image, sized=True)

    folds = spec.training.cross_validation.folds if spec.training.cross_validation else 0
    # Folds one after another: each asks for the training stage's whole resources.
    groups = [UnitGroup((unit(f"fold-{i}", "fold", "--fold", str(i)),)) for i in range(folds)]
    groups.append(UnitGroup((unit("train", "train"),)))
    overfitting = spec.findings.overfitting
    if overfitting.action == "remediate":
        # The template's args get "--unit NAME" in front when an attempt is made.
        template = replace(unit("remediate", "remediate"), args=())
        augment = _one_process(spec, "remediate-augment", "training", "remediate-augment",
                               "kubetrain.workloads.augment", "--whole")
        groups.append(UnitGroup(remediation=RemediationLoop(
            overfitting.remediation_settings.max_attempts, template, augment)))
    return Stage("training", tuple(groups))


def _one_process(spec: TrainingJobSpec, name: str, stage: str, kind: UnitKind, module: str,
                 *args: str) -> WorkUnit:
    """A one-process work unit: one training worker's share of a node (at most one GPU)."""
    res = spec.training.resources
    return WorkUnit(name=name, stage=stage, kind=kind, module=module, args=args,
                    gpus_per_node=min(res.gpus_per_node, 1), sized=True,
                    cpu=max(0.1, parse_cpu(res.cpu) / res.workers_per_node),
                    memory_gib=max(0.25, parse_memory_gib(res.memory) / res.workers_per_node))


def _small(name: str, stage: str, kind: UnitKind, module: str, *args: str,
           service: bool = False, study_client: bool = False) -> WorkUnit:
    """A light helper unit (study server, sweep summary, report)."""
    return WorkUnit(name=name, stage=stage, kind=kind, module=module, args=args, cpu=0.25,
                    memory_gib=0.5, service=service, study_client=study_client)


def _augmentation(spec: TrainingJobSpec) -> Stage:
    """The shards at once (up to augmentation.parallelism), then the merge."""
    shards = spec.augmentation.shards
    module = "kubetrain.workloads.augment"
    parts = tuple(_one_process(spec, f"augment-{i}", "augmentation", "augment-shard", module,
                               "--shard", str(i), "--shards", str(shards))
                  for i in range(shards))
    merge = _one_process(spec, "augment-merge", "augmentation", "augment-merge", module,
                         "--merge", "--shards", str(shards))
    return Stage("augmentation", (
        UnitGroup(parts, limit=min(shards, spec.augmentation.parallelism)),
        UnitGroup((merge,))))


def _tuning(spec: TrainingJobSpec, job_name: str) -> Stage:
    if spec.tuning.backend == "ray":
        # Ray Tune runs its own sweep inside one unit.
        return Stage("tuning", (UnitGroup((_one_process(
            spec, "tune", "tuning", "tune", "kubetrain.workloads.tune"),)),))
    target = target_trials(spec)
    study = _small(STUDY_UNIT, "tuning", "study", "kubetrain.tuning.serve",
                   "--port", str(STUDY_PORT), service=True)
    template = replace(
        _one_process(spec, "trial", "tuning", "trial", "kubetrain.workloads.trial",
                     "--study", job_name),
        study_client=True, image=spec.training.image)
    sweep = TrialSweep(target=target, parallelism=min(spec.tuning.parallelism, target),
                       template=template, seed=spec.dataset.seed)
    summary = _small(SUMMARY_UNIT, "tuning", "tune-summary", "kubetrain.workloads.tune",
                     "--summarize", study_client=True)
    return Stage("tuning", (UnitGroup(limit=sweep.parallelism, sweep=sweep, service=study),
                            UnitGroup((summary,))))


def plan(spec: TrainingJobSpec, job_name: str = "job") -> Plan:
    """The stages of a TrainingJob, in order, each with its work units."""
    stages = []
    for name in STAGE_ORDER:
        if not _enabled(spec, name):
            continue
        if name == "data":
            stages.append(Stage("data", (UnitGroup((WorkUnit(
                name="fetch", stage="data", kind="fetch", module="kubetrain.workloads.fetch",
                cpu=0.5, memory_gib=1.0),)),)))
        elif name == "augmentation":
            stages.append(_augmentation(spec))
        elif name == "tuning":
            stages.append(_tuning(spec, job_name))
        elif name == "training":
            stages.append(_training(spec))
        elif name == "explanation":
            stages.append(Stage("explanation", (UnitGroup((_one_process(
                spec, "explain", "explanation", "explain", "kubetrain.workloads.explain"),)),)))
    report = _small(REPORT_UNIT, "report", "report", "kubetrain.workloads.finish")
    return Plan(tuple(stages), report=report)
