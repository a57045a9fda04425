"""Pure decisions of the cluster side: which pod's log to show, where a job's storage is, and
the short-lived pod that copies artifacts out of it."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from ..api.resource import TrainingJob
from ..controller.builders import DATA_MOUNT, LABEL_JOB, LABEL_UNIT
from .errors import NotFound

ARTIFACTS_MOUNT = "/artifacts"


def choose_pod(job: str, pods: list[dict[str, Any]], unit: str | None) -> dict[str, Any]:
    """The pod whose log to show: ``unit``'s newest pod (rank 0 first), else the newest pod."""
    units = sorted({(p["metadata"].get("labels") or {}).get(LABEL_UNIT, "") for p in pods} - {""})
    if unit is not None:
        pods = [p for p in pods if (p["metadata"].get("labels") or {}).get(LABEL_UNIT) == unit]
    if not pods:
        wanted = f" for unit {unit!r}" if unit else ""
        raise NotFound(f"TrainingJob {job} has no pods{wanted}; units with pods: "
                       f"{', '.join(units) or 'none'}")
    return max(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "",
                                    p["metadata"]["name"].endswith("-0"),
                                    p["metadata"]["name"]))


def storage_location(job: TrainingJob) -> tuple[str, str]:
    """The job's storage as (claim, folder inside the claim), from the paths in its status.

    The operator writes artifact paths as the pods see them, /data/<claim>/<folder>/...; a job
    with no artifacts yet has nothing to fetch.
    """
    status = job.status
    path = (status.artifacts.get("status") or status.artifacts.get("report")) if status else None
    if not path or not path.startswith(f"{DATA_MOUNT}/"):
        raise NotFound(f"TrainingJob {job.metadata.name} has no artifacts yet (phase "
                       f"{status.phase if status else 'Pending'}); they appear when it ends")
    parts = PurePosixPath(path).parent.relative_to(DATA_MOUNT).parts
    return parts[0], "/".join(parts[1:])


def artifact_pod(job: TrainingJob, claim: str, image: str, name: str) -> dict[str, Any]:
    """A pod that mounts the storage claim read-only and waits to be exec'd into (tar)."""
    security = {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
                "seccompProfile": {"type": "RuntimeDefault"}}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": job.metadata.namespace,
                     "labels": {LABEL_JOB: job.metadata.name,
                                "app.kubernetes.io/managed-by": "kubetrain",
                                "app.kubernetes.io/component": "get-artifacts"}},
        "spec": {
            "restartPolicy": "Never",
            # Removed by the CLI when done; this bounds its life if the CLI dies first.
            "activeDeadlineSeconds": 900,
            "containers": [{
                "name": "copy", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "900"],
                "securityContext": security,
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                              "limits": {"cpu": "500m", "memory": "256Mi"}},
                "volumeMounts": [{"name": "storage", "mountPath": ARTIFACTS_MOUNT,
                                  "readOnly": True}],
            }],
            "volumes": [{"name": "storage", "persistentVolumeClaim": {"claimName": claim,
                                                                       "readOnly": True}}],
        },
    }
