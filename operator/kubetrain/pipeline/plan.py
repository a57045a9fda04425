"""Pure planning: which stages run, in which order, as which work units.

Both executors take this plan: the local one starts each work unit as a process (torchrun for
DDP), the operator starts each as pods. Neither decides anything the plan already says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api.quantity import parse_cpu, parse_memory_gib
from ..api.spec import TrainingJobSpec

STAGE_ORDER = ("augmentation", "tuning", "training", "explanation")


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
    cpu, memory = parse_cpu(res.cpu), parse_memory_gib(res.memory)

    def unit(name: str, *args: str) -> WorkUnit:
        return WorkUnit(name=name, stage="training", module="kubetrain.workloads.train",
                        args=("--unit", name, *args), nodes=res.nodes,
                        nproc_per_node=res.workers_per_node, gpus_per_node=res.gpus_per_node,
                        cpu=cpu, memory_gib=memory)

    folds = spec.training.cross_validation.folds if spec.training.cross_validation else 0
    return (*(unit(f"fold-{i}", "--fold", str(i)) for i in range(folds)), unit("train"))


def _single_node_unit(spec: TrainingJobSpec, name: str, stage: str, module: str,
                      *args: str) -> WorkUnit:
    """A one-process work unit: one training worker's share of a node (at most one GPU)."""
    res = spec.training.resources
    return WorkUnit(name=name, stage=stage, module=module, args=args,
                    gpus_per_node=min(res.gpus_per_node, 1),
                    cpu=max(0.1, parse_cpu(res.cpu) / res.workers_per_node),
                    memory_gib=max(0.25, parse_memory_gib(res.memory) / res.workers_per_node))


def _augmentation_units(spec: TrainingJobSpec) -> tuple[WorkUnit, ...]:
    """One unit per shard (they can run at once), then the merge that writes the manifest."""
    shards = spec.augmentation.shards
    module = "kubetrain.workloads.augment"
    parts = tuple(
        _single_node_unit(spec, f"augment-{i}", "augmentation", module,
                          "--shard", str(i), "--shards", str(shards))
        for i in range(shards)
    )
    merge = _single_node_unit(spec, "augment-merge", "augmentation", module,
                              "--merge", "--shards", str(shards))
    return (*parts, merge)


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
        elif name == "training":
            stages.append(Stage(name, units=_training_units(spec)))
        elif name == "augmentation":
            stages.append(Stage(name, units=_augmentation_units(spec)))
        elif name == "tuning":
            # The sweep driver keeps `parallelism` trial processes going; on Kubernetes the
            # operator plays that part with trial pods and a study-server pod.
            stages.append(Stage(name, units=(_single_node_unit(
                spec, "tune", "tuning", "kubetrain.workloads.tune"),)))
        elif name == "explanation":
            stages.append(Stage(name, units=(_single_node_unit(
                spec, "explain", "explanation", "kubetrain.workloads.explain"),)))
    return Plan(tuple(stages))
