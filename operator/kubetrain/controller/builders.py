"""Pure builders of the Kubernetes objects a TrainingJob's work units run as.

Every function returns plain dicts (what `kubectl apply` would send), so that the reconcile
decision and the tests need no API server. Names are fixed per logical child, so creating an
object that already exists is success, never a duplicate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import yaml

from ..api.quantity import parse_cpu, parse_memory_gib
from ..api.resource import API_VERSION, KIND, TrainingJob
from ..pipeline.plan import WorkUnit

LABEL_JOB = "kubetrain.io/job"
LABEL_STAGE = "kubetrain.io/stage"
LABEL_UNIT = "kubetrain.io/unit"
LABEL_RANK = "kubetrain.io/rank"
LABEL_ROLE = "kubetrain.io/role"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
MASTER_PORT = 29500
STUDY_PORT = 13000
JOB_MOUNT = "/etc/kubetrain"
DATA_MOUNT = "/data"
DEV_SOURCE_MOUNT = "/opt/kubetrain-dev"
# The worker runs as this non-root user (images/worker/Dockerfile creates it).
WORKER_UID = 1000


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator's configuration adds to every job (defaults for what specs omit)."""

    worker_image: str = "kubetrain-worker:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    """Secrets (in the job's namespace) for pulling the worker image from a private registry."""
    default_pvc: str | None = None
    dev_source: str | None = None
    """Development only: a host folder holding the kubetrain package (the repo's operator/),
    mounted into worker pods ahead of the image's copy, so tests on a one-node cluster run the
    code under test without rebuilding the 2.5 GB worker image for every change."""


def child_name(job: str, *parts: str) -> str:
    """A DNS-1123 name for a child object, at most 63 characters."""
    name = "-".join((job, *parts))
    if len(name) > 63:
        raise ValueError(f"child name {name!r} is longer than 63 characters; shorten "
                         "metadata.name")
    return name


def storage_claim(job: TrainingJob, settings: OperatorSettings) -> str | None:
    return job.spec.storage.pvc or settings.default_pvc


def storage_dir(job: TrainingJob, settings: OperatorSettings) -> str:
    """The job's folder inside its PVC, as the pods see it."""
    claim = storage_claim(job, settings)
    sub = job.spec.storage.path or f"kubetrain/{job.metadata.namespace or 'default'}/" \
        f"{job.metadata.name}"
    return f"{DATA_MOUNT}/{claim}/{sub.strip('/')}"


def dataset_claims(job: TrainingJob) -> list[str]:
    """PVCs named by pvc:// dataset URIs: mounted beside the storage claim."""
    uri = job.spec.dataset.uri or ""
    if uri.startswith("pvc://"):
        return [uri[len("pvc://"):].split("/", 1)[0]]
    return []


def labels(job: TrainingJob, unit: WorkUnit | None = None, **extra: str) -> dict[str, str]:
    result = {LABEL_JOB: job.metadata.name, "app.kubernetes.io/managed-by": "kubetrain"}
    if unit is not None:
        result[LABEL_STAGE] = unit.stage
        result[LABEL_UNIT] = unit.name
    if job.spec.run_policy.queue_name:
        result[LABEL_QUEUE] = job.spec.run_policy.queue_name
    result.update(extra)
    return result


def owner_reference(job: TrainingJob) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": job.metadata.name,
            "uid": job.metadata.uid or "", "controller": True, "blockOwnerDeletion": True}


def _metadata(job: TrainingJob, name: str, lab: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": job.metadata.namespace, "labels": lab,
            "ownerReferences": [owner_reference(job)]}


def job_config_map(job: TrainingJob) -> dict[str, Any]:
    """The manifest the work units read with --job (the spec as applied, no status)."""
    manifest = job.to_manifest()
    manifest.pop("status", None)
    manifest["metadata"] = {"name": job.metadata.name,
                            "namespace": job.metadata.namespace or "default"}
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": _metadata(job, child_name(job.metadata.name, "job"), labels(job)),
        "data": {"job.yaml": yaml.safe_dump(manifest, sort_keys=False)},
    }


def _resources(unit: WorkUnit) -> dict[str, Any]:
    # round/ceil, not int: 1.001 * 1000 is 1000.999... and 1G is 953.67Mi; truncating would
    # ask for less than the spec says (and lower the memory limit below it).
    requests: dict[str, Any] = {"cpu": f"{round(unit.cpu * 1000)}m",
                                "memory": f"{math.ceil(round(unit.memory_gib * 1024, 6))}Mi"}
    limits: dict[str, Any] = {"memory": requests["memory"]}
    if unit.gpus_per_node:
        requests["nvidia.com/gpu"] = str(unit.gpus_per_node)
        limits["nvidia.com/gpu"] = str(unit.gpus_per_node)
    return {"requests": requests, "limits": limits}


def unit_command(unit: WorkUnit, storage: str, extra_args: list[str],
                 master: str | None = None) -> list[str]:
    """The container command: the work unit's module, under torchrun for a DDP gang."""
    module = ["-m", unit.module, *unit.args, "--job", f"{JOB_MOUNT}/job.yaml",
              "--storage", storage, "--base-dir", DATA_MOUNT, "--data-root", DATA_MOUNT,
              *extra_args]
    if unit.world_size == 1:
        return ["python", *module]
    if unit.nodes == 1:
        return ["python", "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={unit.nproc_per_node}", "--max-restarts=0", *module]
    # torchrun reads PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and
    # PET_MASTER_PORT from the environment (set in the pod spec).
    del master
    return ["python", "-m", "torch.distributed.run", "--max-restarts=0", *module]


def pod_spec(job: TrainingJob, unit: WorkUnit, settings: OperatorSettings,
             command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """A hardened pod for a work unit: no API token, non-root, no capabilities."""
    claims = [c for c in [storage_claim(job, settings), *dataset_claims(job)] if c]
    claims = list(dict.fromkeys(claims))
    volumes: list[dict[str, Any]] = [
        {"name": "job", "configMap": {"name": child_name(job.metadata.name, "job")}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "job", "mountPath": JOB_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    for i, claim in enumerate(claims):
        volumes.append({"name": f"data{i}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"data{i}", "mountPath": f"{DATA_MOUNT}/{claim}"})
    environment = {"HOME": "/tmp", "MPLCONFIGDIR": "/tmp/matplotlib", "PYTHONUNBUFFERED": "1",
                   **(env or {})}
    if settings.dev_source:
        volumes.append({"name": "dev-source",
                        "hostPath": {"path": settings.dev_source, "type": "Directory"}})
        mounts.append({"name": "dev-source", "mountPath": DEV_SOURCE_MOUNT, "readOnly": True})
        environment["PYTHONPATH"] = DEV_SOURCE_MOUNT
    if unit.world_size > 1 and not unit.gpus_per_node:
        environment.setdefault("OMP_NUM_THREADS", "1")
    pull_secrets = [{"name": name} for name in settings.image_pull_secrets]
    return {
        **({"imagePullSecrets": pull_secrets} if pull_secrets else {}),
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": WORKER_UID,
                            "runAsGroup": WORKER_UID, "fsGroup": WORKER_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "worker",
            "image": job.spec.image or settings.worker_image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": command,
            "env": [{"name": k, "value": v} for k, v in environment.items()],
            "resources": _resources(unit),
            "volumeMounts": mounts,
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": {"allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
        }],
        "volumes": volumes,
    }


def batch_job(job: TrainingJob, unit: WorkUnit, settings: OperatorSettings,
              extra_args: list[str] | None = None) -> dict[str, Any]:
    """A one-pod Job for a single-process unit (augmentation shard, merge, explanation)."""
    name = child_name(job.metadata.name, unit.name)
    command = unit_command(unit, storage_dir(job, settings), extra_args or [])
    lab = labels(job, unit)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _metadata(job, name, lab),
        "spec": {
            "backoffLimit": job.spec.run_policy.backoff_limit,
            "template": {"metadata": {"labels": lab},
                         "spec": pod_spec(job, unit, settings, command)},
        },
    }


def gang_pods(job: TrainingJob, unit: WorkUnit, settings: OperatorSettings,
              extra_args: list[str] | None = None) -> list[dict[str, Any]]:
    """One pod per node rank of a training unit, with the torchrun environment."""
    service = child_name(job.metadata.name, unit.name)
    namespace = job.metadata.namespace or "default"
    pods = []
    for rank in range(unit.nodes):
        env = {}
        if unit.nodes > 1:
            env = {"PET_NNODES": str(unit.nodes), "PET_NPROC_PER_NODE": str(unit.nproc_per_node),
                   "PET_NODE_RANK": str(rank),
                   "PET_MASTER_ADDR": f"{service}.{namespace}.svc",
                   "PET_MASTER_PORT": str(MASTER_PORT)}
        command = unit_command(unit, storage_dir(job, settings), extra_args or [])
        lab = labels(job, unit, **{LABEL_RANK: str(rank)})
        spec = pod_spec(job, unit, settings, command, env)
        spec["hostname"] = child_name(job.metadata.name, unit.name, str(rank))
        spec["subdomain"] = f"{service}-workers"
        pods.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": _metadata(job, child_name(job.metadata.name, unit.name,
                                                           str(rank)), lab),
                     "spec": spec})
    return pods


def gang_services(job: TrainingJob, unit: WorkUnit) -> list[dict[str, Any]]:
    """The gang's headless Service (peer names), and the rendezvous Service on rank 0.

    torchrun only needs the master's address; a ClusterIP Service on rank 0 works on every
    cluster, including ones without pod DNS records.
    """
    base = child_name(job.metadata.name, unit.name)
    selector = {LABEL_JOB: job.metadata.name, LABEL_UNIT: unit.name}
    headless = {"apiVersion": "v1", "kind": "Service",
                "metadata": _metadata(job, f"{base}-workers", labels(job, unit)),
                "spec": {"clusterIP": "None", "selector": selector,
                         "publishNotReadyAddresses": True,
                         "ports": [{"name": "c10d", "port": MASTER_PORT}]}}
    master = {"apiVersion": "v1", "kind": "Service",
              "metadata": _metadata(job, base, labels(job, unit)),
              "spec": {"selector": {**selector, LABEL_RANK: "0"},
                       "publishNotReadyAddresses": True,
                       "ports": [{"name": "c10d", "port": MASTER_PORT}]}}
    return [headless, master]


def params_args(params: dict[str, Any] | None) -> list[str]:
    return ["--params", json.dumps(params)] if params else []


# ----- the tuning stage: a study server, trial pods, a summary Job ------------------------------

STUDY_UNIT = "study"
SUMMARY_UNIT = "tune-summary"


def study_address(job: TrainingJob) -> str:
    return f"{child_name(job.metadata.name, STUDY_UNIT)}:{STUDY_PORT}"


def _tuning_unit(job: TrainingJob, name: str, module: str, args: tuple[str, ...],
                 cpu: float, memory_gib: float, gpus: int = 0) -> WorkUnit:
    return WorkUnit(name=name, stage="tuning", module=module, args=args, cpu=cpu,
                    memory_gib=memory_gib, gpus_per_node=gpus)


def tuning_work_unit(job: TrainingJob, name: str) -> WorkUnit | None:
    """The work unit behind a tuning child on Kubernetes: study, trial-N or tune-summary."""
    if name == STUDY_UNIT:
        return _tuning_unit(job, STUDY_UNIT, "kubetrain.tuning.serve",
                            ("--port", str(STUDY_PORT)), cpu=0.25, memory_gib=0.5)
    if name == SUMMARY_UNIT:
        return _tuning_unit(job, SUMMARY_UNIT, "kubetrain.workloads.tune",
                            ("--summarize", "--study-server", study_address(job)),
                            cpu=0.25, memory_gib=0.5)
    if name.startswith("trial-") and name[len("trial-"):].isdigit():
        index = int(name[len("trial-"):])
        res = job.spec.training.resources
        return _tuning_unit(
            job, name, "kubetrain.workloads.trial",
            ("--study", job.metadata.name, "--study-server", study_address(job),
             # Pods that start together must not draw the same random points.
             "--sampler-seed", str(job.spec.dataset.seed * 1000 + index)),
            # A trial is one training process: its share of a node's requests.
            cpu=max(0.1, parse_cpu(res.cpu) / res.workers_per_node),
            memory_gib=max(0.25, parse_memory_gib(res.memory) / res.workers_per_node),
            gpus=min(res.gpus_per_node, 1))
    return None


def study_server(job: TrainingJob, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The pod that serves the study (Optuna's gRPC proxy over the journal) and its Service.

    The server creates the study before serving, so trial pods never race to create it; it
    restarts in place if it dies, and replays the journal: the study outlives every pod.
    """
    unit = tuning_work_unit(job, STUDY_UNIT)
    assert unit is not None
    name = child_name(job.metadata.name, STUDY_UNIT)
    lab = labels(job, unit, **{LABEL_ROLE: "study-server"})
    spec = pod_spec(job, unit, settings, unit_command(unit, storage_dir(job, settings), []))
    spec["restartPolicy"] = "Always"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": _metadata(job, name, lab),
           "spec": spec}
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": _metadata(job, name, labels(job, unit)),
               "spec": {"selector": {LABEL_JOB: job.metadata.name,
                                     LABEL_ROLE: "study-server"},
                        "ports": [{"name": "grpc", "port": STUDY_PORT}]}}
    return [pod, service]


def trial_pod(job: TrainingJob, settings: OperatorSettings, index: int) -> dict[str, Any]:
    """One trial in its own pod, with the training stage's requests (one process)."""
    unit = tuning_work_unit(job, f"trial-{index}")
    assert unit is not None
    name = child_name(job.metadata.name, unit.name)
    lab = labels(job, unit, **{LABEL_ROLE: "trial"})
    spec = pod_spec(job, unit, settings, unit_command(unit, storage_dir(job, settings), []))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _metadata(job, name, lab),
            "spec": spec}


def tuning_summary_job(job: TrainingJob, settings: OperatorSettings) -> dict[str, Any]:
    """After the last trial: fail trials whose pods died, and report the sweep's summary."""
    unit = tuning_work_unit(job, SUMMARY_UNIT)
    assert unit is not None
    return batch_job(job, unit, settings)
