"""The Kubernetes objects the operator creates for a TrainingJob (pure builders, no cluster)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from kubetrain.api import parse_training_job
from kubetrain.api.resource import TrainingJob
from kubetrain.controller import builders as b
from kubetrain.controller.builders import OperatorSettings
from kubetrain.pipeline.plan import WorkUnit, plan

SETTINGS = OperatorSettings(worker_image="registry.example/kubetrain-worker:9.9")
UID = "0b7c2a4e-1111-2222-3333-444455556666"


def make_job(name: str = "mnist", **spec: Any) -> TrainingJob:
    manifest: dict[str, Any] = {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ml", "uid": UID, "generation": 1},
        "spec": {
            "dataset": {"builtin": "digits"},
            "model": {"builtin": "mlp"},
            "storage": {"pvc": "shared"},
        },
    }
    manifest["spec"].update(copy.deepcopy(spec))
    return parse_training_job(manifest)


def gang_job(**spec: Any) -> TrainingJob:
    resources = {"nodes": 2, "nprocPerNode": 2, "gpusPerNode": 2, "cpu": "4",
                 "memory": "16Gi"}
    return make_job(training={"epochs": 5, "resources": resources}, **spec)


def unit_of(job: TrainingJob, name: str) -> WorkUnit:
    for stage in plan(job.spec).stages:
        for unit in stage.units:
            if unit.name == name:
                return unit
    raise AssertionError(f"no unit {name}")


def container(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Job" else obj["spec"]
    (only,) = spec["containers"]
    return only


def env_of(obj: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(obj)["env"]}


# ----- training gang ---------------------------------------------------------------------------


def test_gang_has_one_pod_per_node_rank_with_fixed_names() -> None:
    job = gang_job()
    pods = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    assert [p["metadata"]["name"] for p in pods] == ["mnist-train-0", "mnist-train-1"]
    assert [p["metadata"]["labels"][b.LABEL_RANK] for p in pods] == ["0", "1"]
    assert all(p["kind"] == "Pod" and p["metadata"]["namespace"] == "ml" for p in pods)
    # Building twice gives the same names: creating again is "already exists", not a duplicate.
    again = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    assert [p["metadata"]["name"] for p in again] == ["mnist-train-0", "mnist-train-1"]


def test_gang_pods_carry_the_torchrun_environment() -> None:
    job = gang_job()
    pods = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    for rank, pod in enumerate(pods):
        env = env_of(pod)
        assert env["PET_NNODES"] == "2"
        assert env["PET_NPROC_PER_NODE"] == "2"
        assert env["PET_NODE_RANK"] == str(rank)
        # The rank-0 Service (same name as the unit's child name) in the job's namespace.
        assert env["PET_MASTER_ADDR"] == "mnist-train.ml.svc"
        assert env["PET_MASTER_PORT"] == "29500"
        assert env["HOME"] == "/tmp"
        # GPU workers keep their thread defaults.
        assert "OMP_NUM_THREADS" not in env
        spec = pod["spec"]
        assert spec["hostname"] == f"mnist-train-{rank}"
        assert spec["subdomain"] == "mnist-train-workers"
        assert spec["restartPolicy"] == "Never"


def test_multi_node_gang_runs_torchrun_with_the_train_module() -> None:
    job = gang_job()
    (pod, _) = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    command = container(pod)["command"]
    assert command[:4] == ["python", "-m", "torch.distributed.run", "--max-restarts=0"]
    assert "--standalone" not in command
    module = command[command.index("-m", 2) + 1:]
    assert module[0] == "kubetrain.workloads.train"
    assert module[1:3] == ["--unit", "train"]
    assert command[command.index("--job") + 1] == "/etc/kubetrain/job.yaml"
    assert command[command.index("--storage") + 1] == "/data/shared/kubetrain/ml/mnist"
    assert command[command.index("--base-dir") + 1] == "/data"


def test_single_node_multi_process_gang_uses_standalone_rendezvous() -> None:
    job = make_job(training={"resources": {"nodes": 1, "nprocPerNode": 3}})
    (pod,) = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    command = container(pod)["command"]
    assert command[:5] == ["python", "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=3"]
    env = env_of(pod)
    assert not any(k.startswith("PET_") for k in env)
    # CPU DDP workers: one thread each, so 3 workers do not oversubscribe the cores.
    assert env["OMP_NUM_THREADS"] == "1"


def test_single_process_unit_runs_plain_python() -> None:
    job = make_job()
    (pod,) = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    command = container(pod)["command"]
    assert command[:3] == ["python", "-m", "kubetrain.workloads.train"]
    assert "torch.distributed.run" not in command


def test_gpu_requests_and_limits() -> None:
    job = gang_job()
    (pod, _) = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    resources = container(pod)["resources"]
    assert resources["requests"] == {"cpu": "4000m", "memory": "16384Mi",
                                     "nvidia.com/gpu": "2"}
    assert resources["limits"] == {"memory": "16384Mi", "nvidia.com/gpu": "2"}


def test_cpu_only_pods_request_no_gpu() -> None:
    job = make_job(training={"resources": {"cpu": "500m", "memory": "512Mi"}})
    (pod,) = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    resources = container(pod)["resources"]
    assert resources["requests"] == {"cpu": "500m", "memory": "512Mi"}
    assert "nvidia.com/gpu" not in resources["limits"]


def test_odd_quantities_are_not_truncated_below_the_request() -> None:
    # 1.001 * 1000 is 1000.999... in floating point; the pod must still ask for 1001m.
    job = make_job(training={"resources": {"cpu": "1001m", "memory": "1G"}})
    (pod,) = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    requests = container(pod)["resources"]["requests"]
    assert requests["cpu"] == "1001m"
    # 1G = 953.67Mi: the request (and the OOM limit) must not drop below what was asked.
    assert requests["memory"] == "954Mi"


def test_pod_volumes_shm_pvc_and_job_config_map() -> None:
    job = gang_job()
    (pod, _) = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container(pod)["volumeMounts"]}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    assert volumes["job"]["configMap"] == {"name": "mnist-job"}
    assert mounts["job"] == {"name": "job", "mountPath": "/etc/kubetrain", "readOnly": True}
    assert volumes["data0"]["persistentVolumeClaim"] == {"claimName": "shared"}
    assert mounts["data0"]["mountPath"] == "/data/shared"
    # The root filesystem is read-only: /tmp must be writable.
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert "emptyDir" in volumes["tmp"]


def test_worker_image_pull_secrets_only_when_configured() -> None:
    job = make_job()
    (pod,) = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    assert "imagePullSecrets" not in pod["spec"]
    private = OperatorSettings(worker_image="registry.example/w:1", image_pull_secrets=("rc",))
    (pod,) = b.gang_pods(job, unit_of(job, "train"), private)
    assert pod["spec"]["imagePullSecrets"] == [{"name": "rc"}]


def test_dataset_pvc_is_mounted_beside_the_storage_pvc() -> None:
    job = make_job(dataset={"uri": "pvc://datasets/digits/train.npz"})
    (pod,) = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == ["shared", "datasets"]
    mounts = [m["mountPath"] for m in container(pod)["volumeMounts"]]
    assert "/data/datasets" in mounts


def test_same_claim_for_storage_and_dataset_is_mounted_once() -> None:
    job = make_job(dataset={"uri": "pvc://shared/digits.npz"})
    (pod,) = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == ["shared"]


def test_pods_are_hardened() -> None:
    job = gang_job()
    for pod in b.gang_pods(job, unit_of(job, "train"), SETTINGS):
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 1000
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        security = container(pod)["securityContext"]
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False


def test_owner_reference_points_at_the_job() -> None:
    job = gang_job()
    (pod, _) = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    (owner,) = pod["metadata"]["ownerReferences"]
    assert owner == {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
                     "name": "mnist", "uid": UID, "controller": True,
                     "blockOwnerDeletion": True}


def test_labels_and_kueue_queue_name() -> None:
    job = gang_job(runPolicy={"queueName": "team-a"})
    (pod, _) = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    assert pod["metadata"]["labels"] == {
        "kubetrain.io/job": "mnist", "app.kubernetes.io/managed-by": "kubetrain",
        "kubetrain.io/stage": "training", "kubetrain.io/unit": "train",
        "kueue.x-k8s.io/queue-name": "team-a", "kubetrain.io/rank": "0",
    }
    without = gang_job()
    (pod, _) = b.gang_pods(without, unit_of(without, "train"), SETTINGS)
    assert "kueue.x-k8s.io/queue-name" not in pod["metadata"]["labels"]


def test_image_from_spec_overrides_the_operator_default() -> None:
    job = make_job()
    (pod,) = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    assert container(pod)["image"] == "registry.example/kubetrain-worker:9.9"
    assert container(pod)["imagePullPolicy"] == "IfNotPresent"
    custom = make_job(image="me/my-worker:1")
    (pod,) = b.gang_pods(custom, unit_of(custom, "train"), SETTINGS)
    assert container(pod)["image"] == "me/my-worker:1"


def test_tuned_params_are_passed_to_the_training_command() -> None:
    job = make_job()
    (pod,) = b.gang_pods(job, unit_of(job, "train"), SETTINGS,
                         b.params_args({"learningRate": 0.01}))
    command = container(pod)["command"]
    assert command[-2:] == ["--params", '{"learningRate": 0.01}']
    assert b.params_args(None) == []
    assert b.params_args({}) == []


# ----- services --------------------------------------------------------------------------------


def test_gang_services_headless_and_rank0_master() -> None:
    job = gang_job()
    headless, master = b.gang_services(job, unit_of(job, "train"))
    assert headless["metadata"]["name"] == "mnist-train-workers"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == {"kubetrain.io/job": "mnist",
                                            "kubetrain.io/unit": "train"}
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert master["metadata"]["name"] == "mnist-train"
    assert "clusterIP" not in master["spec"]
    assert master["spec"]["selector"] == {"kubetrain.io/job": "mnist",
                                          "kubetrain.io/unit": "train", "kubetrain.io/rank": "0"}
    assert master["spec"]["ports"] == [{"name": "c10d", "port": 29500}]
    for service in (headless, master):
        assert service["metadata"]["ownerReferences"][0]["uid"] == UID
    # The pods' master address is this Service.
    (pod, _) = b.gang_pods(job, unit_of(job, "train"), SETTINGS)
    assert env_of(pod)["PET_MASTER_ADDR"].split(".")[0] == master["metadata"]["name"]


# ----- batch Jobs ------------------------------------------------------------------------------


def test_explanation_runs_as_a_batch_job_with_the_run_policy_backoff() -> None:
    job = make_job(explanation={"enabled": True}, runPolicy={"backoffLimit": 5},
                   training={"resources": {"gpusPerNode": 4}})
    obj = b.batch_job(job, unit_of(job, "explain"), SETTINGS)
    assert obj["apiVersion"] == "batch/v1"
    assert obj["kind"] == "Job"
    assert obj["metadata"]["name"] == "mnist-explain"
    assert obj["spec"]["backoffLimit"] == 5
    template = obj["spec"]["template"]
    assert template["metadata"]["labels"]["kubetrain.io/unit"] == "explain"
    assert template["metadata"]["labels"]["kubetrain.io/stage"] == "explanation"
    assert template["spec"]["restartPolicy"] == "Never"
    assert template["spec"]["automountServiceAccountToken"] is False
    command = container(obj)["command"]
    assert command[:3] == ["python", "-m", "kubetrain.workloads.explain"]
    # A single-process unit asks for at most one GPU even when training uses four.
    assert container(obj)["resources"]["requests"]["nvidia.com/gpu"] == "1"


def test_augmentation_shards_and_merge_are_batch_jobs() -> None:
    job = make_job(augmentation={"enabled": True, "shards": 2})
    shard = b.batch_job(job, unit_of(job, "augment-1"), SETTINGS)
    merge = b.batch_job(job, unit_of(job, "augment-merge"), SETTINGS)
    assert shard["metadata"]["name"] == "mnist-augment-1"
    assert merge["metadata"]["name"] == "mnist-augment-merge"
    assert shard["spec"]["backoffLimit"] == 3  # the runPolicy default
    shard_cmd = container(shard)["command"]
    assert shard_cmd[:3] == ["python", "-m", "kubetrain.workloads.augment"]
    assert shard_cmd[3:7] == ["--shard", "1", "--shards", "2"]
    assert container(merge)["command"][3:6] == ["--merge", "--shards", "2"]


# ----- job ConfigMap, storage and names --------------------------------------------------------


def test_job_config_map_carries_the_spec_without_status() -> None:
    job = gang_job(runPolicy={"queueName": "team-a"})
    cm = b.job_config_map(job)
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["name"] == "mnist-job"
    assert cm["metadata"]["namespace"] == "ml"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == UID
    manifest = yaml.safe_load(cm["data"]["job.yaml"])
    assert manifest["metadata"] == {"name": "mnist", "namespace": "ml"}
    assert "status" not in manifest
    assert manifest["spec"]["training"]["resources"]["nodes"] == 2
    assert manifest["spec"]["storage"]["pvc"] == "shared"
    # What the pods read is a valid TrainingJob with the same spec.
    assert parse_training_job(manifest).spec == job.spec


def test_storage_dir_default_and_explicit_path() -> None:
    assert b.storage_dir(make_job(), SETTINGS) == "/data/shared/kubetrain/ml/mnist"
    explicit = make_job(storage={"pvc": "shared", "path": "/runs/exp1/"})
    assert b.storage_dir(explicit, SETTINGS) == "/data/shared/runs/exp1"


def test_default_pvc_from_operator_settings() -> None:
    job = make_job(storage={})
    settings = OperatorSettings(default_pvc="cluster-runs")
    assert b.storage_claim(job, settings) == "cluster-runs"
    assert b.storage_dir(job, settings) == "/data/cluster-runs/kubetrain/ml/mnist"
    assert b.storage_claim(job, OperatorSettings()) is None
    # The job's own claim wins over the operator's default.
    assert b.storage_claim(make_job(), settings) == "shared"


def test_child_name_joins_parts_and_refuses_long_names() -> None:
    assert b.child_name("mnist", "train", "0") == "mnist-train-0"
    assert b.child_name("a" * 57, "train") == "a" * 57 + "-train"  # exactly 63
    with pytest.raises(ValueError, match="longer than 63"):
        b.child_name("a" * 58, "train")
