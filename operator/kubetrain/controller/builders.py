"""Pure builders of the Kubernetes objects a TrainingJob's work units run as.

Every function returns plain dicts (what `kubectl apply` would send), so that the reconcile
decision and the tests need no API server. Names are fixed per logical child, so creating an
object that already exists is success, never a duplicate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

from ..api.resource import API_VERSION, KIND, TrainingJob
from ..api.spec import MLFLOW_CREDENTIAL_KEYS
from ..launcher import LAUNCHER, PROGRAM_DIR
from ..pipeline.plan import STUDY_PORT, STUDY_UNIT, WorkUnit

LABEL_JOB = "kubetrain.io/job"
LABEL_STAGE = "kubetrain.io/stage"
LABEL_UNIT = "kubetrain.io/unit"
LABEL_RANK = "kubetrain.io/rank"
LABEL_ROLE = "kubetrain.io/role"
LABEL_ATTEMPT = "kubetrain.io/attempt"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
MASTER_PORT = 29500
JOB_MOUNT = "/etc/kubetrain"
DATA_MOUNT = "/data"
DEV_SOURCE_MOUNT = "/opt/kubetrain-dev"
STATUS_MOUNT = "/etc/kubetrain-status"
STATUS_FILE = "status.json"
# The worker runs as this non-root user (images/worker/Dockerfile creates it).
WORKER_UID = 1000


@dataclass(frozen=True)
class WorkerSettings:
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


def storage_claim(job: TrainingJob, settings: WorkerSettings) -> str | None:
    return job.spec.storage.pvc or settings.default_pvc


def storage_dir(job: TrainingJob, settings: WorkerSettings) -> str:
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


# libyaml's emitter when PyYAML has it (the same text, ~4x faster: a job's ConfigMap is on the
# way to its first children), else PyYAML's own.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def job_config_map(job: TrainingJob) -> dict[str, Any]:
    """The manifest the work units read with --job (the spec as applied, no status)."""
    manifest = job.to_manifest()
    manifest.pop("status", None)
    manifest["metadata"] = {"name": job.metadata.name,
                            "namespace": job.metadata.namespace or "default"}
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": _metadata(job, child_name(job.metadata.name, "job"), labels(job)),
        "data": {"job.yaml": yaml.dump(manifest, Dumper=_DUMPER, sort_keys=False)},
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


RUNNER_RESOURCES = {"requests": {"memory": "128Mi"}, "limits": {"memory": "1Gi"}}
"""The runner beside a program container: it follows the program, the program does the work
and gets the unit's requests. No CPU request: a unit that asks for a whole node's CPUs must
still fit on that node."""


def program_container(job: TrainingJob, unit: WorkUnit) -> bool:
    """A custom program in its own image (training.image) runs in its own container: the image
    needs Python and PyTorch, not kubetrain; the runner stays in the worker image beside it."""
    return job.spec.custom and unit.image is not None and unit.kind in ("train", "fold", "trial")


def unit_command(unit: WorkUnit, storage: str, extra_args: list[str],
                 torchrun: bool = True) -> list[str]:
    """The container command: the work unit's module, under torchrun for a DDP gang (unless
    torchrun runs in a program container instead)."""
    module = ["-m", unit.module, *unit.args, "--job", f"{JOB_MOUNT}/job.yaml",
              "--storage", storage, "--base-dir", DATA_MOUNT, "--data-root", DATA_MOUNT,
              *extra_args]
    if unit.world_size == 1 or not torchrun:
        return ["python", *module]
    if unit.nodes == 1:
        return ["python", "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={unit.nproc_per_node}", "--max-restarts=0", *module]
    # torchrun reads PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and
    # PET_MASTER_PORT from the environment (set in the pod spec).
    return ["python", "-m", "torch.distributed.run", "--max-restarts=0", *module]


def pod_spec(job: TrainingJob, unit: WorkUnit, settings: WorkerSettings,
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
            "env": [{"name": k, "value": v} for k, v in environment.items()]
            + _credentials(job, unit) + _tracking_credentials(job, unit),
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


CREDENTIAL_KEYS = (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False),
                   ("AWS_SESSION_TOKEN", True))
"""Keys of dataset.credentials.secret, and whether each is optional."""


def _credentials(job: TrainingJob, unit: WorkUnit) -> list[dict[str, Any]]:
    """The data stage's pod reads the dataset's Secret; no other pod gets the credentials, and
    the pod spec holds only references to them."""
    creds = job.spec.dataset.credentials
    if unit.kind != "fetch" or creds is None:
        return []
    return [{"name": key, "valueFrom": {"secretKeyRef": {
        "name": creds.secret, "key": key, **({"optional": True} if optional else {})}}}
        for key, optional in CREDENTIAL_KEYS]


TRACKED_KINDS = frozenset({"train", "fold", "trial", "tune", "tune-summary", "explain"})
"""Units that log to the tracking server (the others have no run of their own)."""


def _tracking_credentials(job: TrainingJob, unit: WorkUnit) -> list[dict[str, Any]]:
    """The units that log to MLflow read its Secret (a user name and password, or a token:
    each key optional); the pod spec holds only references to them."""
    mlflow = job.spec.tracking.mlflow
    if mlflow is None or mlflow.credentials is None or unit.kind not in TRACKED_KINDS:
        return []
    return [{"name": key, "valueFrom": {"secretKeyRef": {
        "name": mlflow.credentials.secret, "key": key, "optional": True}}}
        for key in MLFLOW_CREDENTIAL_KEYS]


def study_address(job: TrainingJob) -> str:
    """The sweep's study server, as trial and summary pods reach it (its Service)."""
    return f"{child_name(job.metadata.name, STUDY_UNIT)}:{STUDY_PORT}"


def status_config_map(job: TrainingJob, status_json: str) -> dict[str, Any]:
    """The final status the report unit reads (a file: a big sweep's status outgrows one
    command-line argument; a ConfigMap holds up to 1 MiB)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _metadata(job, child_name(job.metadata.name, "final-status"),
                                  labels(job)),
            "data": {STATUS_FILE: status_json}}


def unit_pods(job: TrainingJob, unit: WorkUnit, attempt: int, settings: WorkerSettings,
              extra_args: tuple[str, ...] = (), status_file: bool = False
              ) -> list[dict[str, Any]]:
    """One pod per node rank of a unit, labelled with the attempt it belongs to.

    Every unit is bare pods (restartPolicy Never), so that one place, the stage engine, decides
    retries for all of them; a training gang of several nodes gets the torchrun environment.
    The study server restarts in place (restartPolicy Always): it replays its journal.
    """
    service = child_name(job.metadata.name, unit.name)
    namespace = job.metadata.namespace or "default"
    args = [*extra_args, *(("--study-server", study_address(job)) if unit.study_client else ()),
            *(("--status-file", f"{STATUS_MOUNT}/{STATUS_FILE}") if status_file else ())]
    separate = program_container(job, unit)
    if separate:
        args.extend(("--program-dir", PROGRAM_DIR))
    command = unit_command(unit, storage_dir(job, settings), args, torchrun=not separate)
    pods = []
    for rank in range(unit.nodes):
        env = {}
        if unit.nodes > 1:
            env = {"PET_NNODES": str(unit.nodes), "PET_NPROC_PER_NODE": str(unit.nproc_per_node),
                   "PET_NODE_RANK": str(rank),
                   "PET_MASTER_ADDR": f"{service}.{namespace}.svc",
                   "PET_MASTER_PORT": str(MASTER_PORT)}
        extra = {LABEL_RANK: str(rank), LABEL_ATTEMPT: str(attempt), LABEL_ROLE: unit.kind}
        lab = labels(job, unit, **extra)
        spec = pod_spec(job, unit, settings, command, env)
        if separate:
            _add_program_container(spec, unit, settings, env)
        if status_file:
            spec["volumes"].append({"name": "final-status", "configMap": {
                "name": child_name(job.metadata.name, "final-status")}})
            spec["containers"][0]["volumeMounts"].append(
                {"name": "final-status", "mountPath": STATUS_MOUNT, "readOnly": True})
        if unit.service:
            spec["restartPolicy"] = "Always"
        if unit.nodes > 1:
            spec["hostname"] = child_name(job.metadata.name, unit.name, str(rank))
            spec["subdomain"] = f"{service}-workers"
        name = child_name(job.metadata.name, unit.name, str(rank)) if unit.nodes > 1 or \
            unit.stage == "training" else child_name(job.metadata.name, unit.name)
        pods.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": _metadata(job, name, lab), "spec": spec})
    return pods


def _add_program_container(spec: dict[str, Any], unit: WorkUnit, settings: WorkerSettings,
                           env: dict[str, str]) -> None:
    """The user's image beside the runner: it gets the unit's resources (GPUs too) and the same
    volumes, shares the pod's processes (the runner signals the program) and a folder."""
    runner = spec["containers"][0]
    runner["resources"] = RUNNER_RESOURCES
    shared = {"name": "program", "mountPath": PROGRAM_DIR}
    runner["volumeMounts"].append(shared)
    spec["volumes"].append({"name": "program", "emptyDir": {}})
    spec["shareProcessNamespace"] = True
    mounts = [m for m in runner["volumeMounts"] if m["name"] != "dev-source"]
    environment = {"HOME": "/tmp", "PYTHONUNBUFFERED": "1", **env}
    if unit.world_size > 1 and not unit.gpus_per_node:
        environment.setdefault("OMP_NUM_THREADS", "1")
    spec["containers"].append({
        "name": "program",
        "image": unit.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["sh", "-c", LAUNCHER, "sh"],
        "env": [{"name": k, "value": v} for k, v in environment.items()],
        "resources": _resources(unit),
        "volumeMounts": mounts,
        "securityContext": runner["securityContext"],
    })


def unit_services(job: TrainingJob, unit: WorkUnit) -> list[dict[str, Any]]:
    """Services a unit needs: a multi-node gang's peers and master; the study server's."""
    base = child_name(job.metadata.name, unit.name)
    selector = {LABEL_JOB: job.metadata.name, LABEL_UNIT: unit.name}
    if unit.kind == "study":
        return [{"apiVersion": "v1", "kind": "Service",
                 "metadata": _metadata(job, base, labels(job, unit)),
                 "spec": {"selector": selector,
                          "ports": [{"name": "grpc", "port": STUDY_PORT, "protocol": "TCP"}]}}]
    if unit.nodes == 1:
        return []
    # torchrun only needs the master's address; a ClusterIP Service on rank 0 works on every
    # cluster, including ones without pod DNS records.
    headless = {"apiVersion": "v1", "kind": "Service",
                "metadata": _metadata(job, f"{base}-workers", labels(job, unit)),
                "spec": {"clusterIP": "None", "selector": selector,
                         "publishNotReadyAddresses": True,
                         "ports": [{"name": "c10d", "port": MASTER_PORT, "protocol": "TCP"}]}}
    master = {"apiVersion": "v1", "kind": "Service",
              "metadata": _metadata(job, base, labels(job, unit)),
              "spec": {"selector": {**selector, LABEL_RANK: "0"},
                       "publishNotReadyAddresses": True,
                       "ports": [{"name": "c10d", "port": MASTER_PORT, "protocol": "TCP"}]}}
    return [headless, master]
