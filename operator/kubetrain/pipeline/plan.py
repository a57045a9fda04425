"""Pure planning: which stages run, in which order, as which work units.

Both executors take this plan: the local one starts each work unit as a process (torchrun for
DDP), the operator starts each as pods. Neither decides anything the plan already says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api.quantity import parse_cpu, parse_memory_gib
from ..api.spec import TrainingJobSpec

STAGE_ORDER = ("augmentation", "tuning", "training", "explanation")
# Stages whose work units exist; the others are modelled, validated and reported as not
# available yet rather than silently skipped.
AVAILABLE_STAGES = frozenset({"training"})


@dataclass(frozen=True)
class WorkUnit:
    """One process group (one pod per node on Kubernetes) running a workload module."""

    name: str
    stage: str
    module: str
    args: tuple[str, ...] = ()
    nodes: int = 1
    nproc_per_node: int = 1
    gpus_per_node: int = 0
    cpu: float = 1.0
    memory_gib: float = 2.0

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node


@dataclass(frozen=True)
class Stage:
    name: str
    units: tuple[WorkUnit, ...] = ()
    available: bool = True
    message: str = ""


@dataclass(frozen=True)
class Plan:
    stages: tuple[Stage, ...] = field(default_factory=tuple)

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]


def _enabled(spec: TrainingJobSpec, stage: str) -> bool:
    if stage == "augmentation":
        return spec.augmentation.enabled
    if stage == "tuning":
        return spec.tuning.enabled
    if stage == "explanation":
        return spec.explanation.enabled
    return True


def _training_units(spec: TrainingJobSpec) -> tuple[WorkUnit, ...]:
    res = spec.training.resources
    common = dict(
        stage="training",
        module="kubetrain.workloads.train",
        nodes=res.nodes,
        nproc_per_node=res.workers_per_node,
        gpus_per_node=res.gpus_per_node,
        cpu=parse_cpu(res.cpu),
        memory_gib=parse_memory_gib(res.memory),
    )
    units = []
    if spec.training.cross_validation:
        for fold in range(spec.training.cross_validation.folds):
            units.append(WorkUnit(name=f"fold-{fold}",
                                  args=("--unit", f"fold-{fold}", "--fold", str(fold)),
                                  **common))  # type: ignore[arg-type]
    units.append(WorkUnit(name="train", args=("--unit", "train"), **common))  # type: ignore[arg-type]
    return tuple(units)


def plan(spec: TrainingJobSpec) -> Plan:
    """The stages of a TrainingJob, in order, each with its work units."""
    stages = []
    for name in STAGE_ORDER:
        if not _enabled(spec, name):
            continue
        if name == "training" and spec.training.command:
            stages.append(Stage(name, available=False, message=(
                "training.command (custom script mode) is not available yet in this version; "
                "remove it to use the built-in trainer")))
        elif name not in AVAILABLE_STAGES:
            stages.append(Stage(name, available=False, message=(
                f"the {name} stage is modelled and validated but not available yet in this "
                f"version; the job runs without it")))
        elif name == "training":
            stages.append(Stage(name, units=_training_units(spec)))
    return Plan(tuple(stages))
