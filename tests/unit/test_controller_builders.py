"""The Kubernetes objects the operator creates for a TrainingJob (pure builders, no cluster)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from kubetrain.api import parse_training_job
from kubetrain.api.resource import TrainingJob
from kubetrain.controller import builders as b
from kubetrain.controller.builders import WorkerSettings
from kubetrain.pipeline.plan import WorkUnit, plan, trial_seed

SETTINGS = WorkerSettings(worker_image="registry.example/kubetrain-worker:9.9")
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
    unit = plan(job.spec, job.metadata.name).unit(name)
    assert unit is not None, f"no unit {name}"
    return unit


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["spec"]["containers"]
    return only


def env_of(obj: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(obj)["env"]}


# ----- training gang ---------------------------------------------------------------------------


def test_gang_has_one_pod_per_node_rank_with_fixed_names() -> None:
    job = gang_job()
    pods = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    assert [p["metadata"]["name"] for p in pods] == ["mnist-train-0", "mnist-train-1"]
    assert [p["metadata"]["labels"][b.LABEL_RANK] for p in pods] == ["0", "1"]
    assert all(p["kind"] == "Pod" and p["metadata"]["namespace"] == "ml" for p in pods)
    # Building twice gives the same names: creating again is "already exists", not a duplicate.
    again = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    assert [p["metadata"]["name"] for p in again] == ["mnist-train-0", "mnist-train-1"]


def test_gang_pods_carry_the_torchrun_environment() -> None:
    job = gang_job()
    pods = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
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
    (pod, _) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
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
    (pod,) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    command = container(pod)["command"]
    assert command[:5] == ["python", "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=3"]
    env = env_of(pod)
    assert not any(k.startswith("PET_") for k in env)
    # CPU DDP workers: one thread each, so 3 workers do not oversubscribe the cores.
    assert env["OMP_NUM_THREADS"] == "1"


def test_single_process_unit_runs_plain_python() -> None:
    job = make_job()
    (pod,) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    command = container(pod)["command"]
    assert command[:3] == ["python", "-m", "kubetrain.workloads.train"]
    assert "torch.distributed.run" not in command


def test_gpu_requests_and_limits() -> None:
    job = gang_job()
    (pod, _) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    resources = container(pod)["resources"]
    assert resources["requests"] == {"cpu": "4000m", "memory": "16384Mi",
                                     "nvidia.com/gpu": "2"}
    assert resources["limits"] == {"memory": "16384Mi", "nvidia.com/gpu": "2"}


def test_cpu_only_pods_request_no_gpu() -> None:
    job = make_job(training={"resources": {"cpu": "500m", "memory": "512Mi"}})
    (pod,) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    resources = container(pod)["resources"]
    assert resources["requests"] == {"cpu": "500m", "memory": "512Mi"}
    assert "nvidia.com/gpu" not in resources["limits"]


def test_odd_quantities_are_not_truncated_below_the_request() -> None:
    # 1.001 * 1000 is 1000.999... in floating point; the pod must still ask for 1001m.
    job = make_job(training={"resources": {"cpu": "1001m", "memory": "1G"}})
    (pod,) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    requests = container(pod)["resources"]["requests"]
    assert requests["cpu"] == "1001m"
    # 1G = 953.67Mi: the request (and the OOM limit) must not drop below what was asked.
    assert requests["memory"] == "954Mi"


def test_pod_volumes_shm_pvc_and_job_config_map() -> None:
    job = gang_job()
    (pod, _) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
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
    (pod,) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    assert "imagePullSecrets" not in pod["spec"]
    private = WorkerSettings(worker_image="registry.example/w:1", image_pull_secrets=("rc",))
    (pod,) = b.unit_pods(job, unit_of(job, "train"), 0, private)
    assert pod["spec"]["imagePullSecrets"] == [{"name": "rc"}]


def test_dataset_pvc_is_mounted_beside_the_storage_pvc() -> None:
    job = make_job(dataset={"uri": "pvc://datasets/digits/train.npz"})
    (pod,) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == ["shared", "datasets"]
    mounts = [m["mountPath"] for m in container(pod)["volumeMounts"]]
    assert "/data/datasets" in mounts


def test_same_claim_for_storage_and_dataset_is_mounted_once() -> None:
    job = make_job(dataset={"uri": "pvc://shared/digits.npz"})
    (pod,) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == ["shared"]


def test_pods_are_hardened() -> None:
    job = gang_job()
    for pod in b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS):
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
    (pod, _) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    (owner,) = pod["metadata"]["ownerReferences"]
    assert owner == {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
                     "name": "mnist", "uid": UID, "controller": True,
                     "blockOwnerDeletion": True}


def test_labels_and_kueue_queue_name() -> None:
    job = gang_job(runPolicy={"queueName": "team-a"})
    (pod, _) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    assert pod["metadata"]["labels"] == {
        "kubetrain.io/job": "mnist", "app.kubernetes.io/managed-by": "kubetrain",
        "kubetrain.io/stage": "training", "kubetrain.io/unit": "train",
        "kueue.x-k8s.io/queue-name": "team-a", "kubetrain.io/rank": "0",
        "kubetrain.io/attempt": "0", "kubetrain.io/role": "train",
    }
    without = gang_job()
    (pod, _) = b.unit_pods(without, unit_of(without, "train"), 0, SETTINGS)
    assert "kueue.x-k8s.io/queue-name" not in pod["metadata"]["labels"]


def test_image_from_spec_overrides_the_operator_default() -> None:
    job = make_job()
    (pod,) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    assert container(pod)["image"] == "registry.example/kubetrain-worker:9.9"
    assert container(pod)["imagePullPolicy"] == "IfNotPresent"
    custom = make_job(image="me/my-worker:1")
    (pod,) = b.unit_pods(custom, unit_of(custom, "train"), 0, SETTINGS)
    assert container(pod)["image"] == "me/my-worker:1"


def test_arguments_the_engine_adds_end_the_command_of_every_rank() -> None:
    job = gang_job()
    for pod in b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS,
                           ("--params", '{"learningRate": 0.01}')):
        assert container(pod)["command"][-2:] == ["--params", '{"learningRate": 0.01}']


def test_dev_source_is_mounted_ahead_of_the_image_copy() -> None:
    job = make_job()
    (pod,) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    assert "PYTHONPATH" not in env_of(pod)
    dev = WorkerSettings(dev_source="/src/operator")
    (pod,) = b.unit_pods(job, unit_of(job, "train"), 0, dev)
    assert env_of(pod)["PYTHONPATH"] == "/opt/kubetrain-dev"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["dev-source"]["hostPath"] == {"path": "/src/operator", "type": "Directory"}


# ----- services --------------------------------------------------------------------------------


def test_gang_services_headless_and_rank0_master() -> None:
    job = gang_job()
    headless, master = b.unit_services(job, unit_of(job, "train"))
    assert headless["metadata"]["name"] == "mnist-train-workers"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == {"kubetrain.io/job": "mnist",
                                            "kubetrain.io/unit": "train"}
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert master["metadata"]["name"] == "mnist-train"
    assert "clusterIP" not in master["spec"]
    assert master["spec"]["selector"] == {"kubetrain.io/job": "mnist",
                                          "kubetrain.io/unit": "train", "kubetrain.io/rank": "0"}
    assert master["spec"]["ports"] == [{"name": "c10d", "port": 29500, "protocol": "TCP"}]
    for service in (headless, master):
        assert service["metadata"]["ownerReferences"][0]["uid"] == UID
    # The pods' master address is this Service.
    (pod, _) = b.unit_pods(job, unit_of(job, "train"), 0, SETTINGS)
    assert env_of(pod)["PET_MASTER_ADDR"].split(".")[0] == master["metadata"]["name"]


def test_single_node_training_needs_no_service() -> None:
    job = make_job(training={"resources": {"nodes": 1, "nprocPerNode": 2}})
    assert b.unit_services(job, unit_of(job, "train")) == []


# ----- every unit is bare pods -----------------------------------------------------------------


def sweep_job(**spec: Any) -> TrainingJob:
    return make_job(dataset={"builtin": "digits", "seed": 3}, tuning={
        "enabled": True, "trials": 4, "parallelism": 2, "searchSpace": {
            "learningRate": {"type": "float", "low": 0.0001, "high": 0.1, "log": True}}},
        **spec)


def all_units(job: TrainingJob) -> list[WorkUnit]:
    the_plan = plan(job.spec, job.metadata.name)
    units = [u for stage in the_plan.stages for u in stage.units]
    for stage in the_plan.stages:
        for group in stage.groups:
            if group.sweep is not None:
                units.append(group.sweep.unit(0))
    assert the_plan.report is not None
    return [*units, the_plan.report]


def test_every_unit_is_bare_pods_labelled_with_its_attempt() -> None:
    job = sweep_job(augmentation={"enabled": True, "shards": 2}, explanation={"enabled": True},
                    training={"crossValidation": {"folds": 2}})
    units = all_units(job)
    assert {u.kind for u in units} == {"augment-shard", "augment-merge", "study", "trial",
                                       "tune-summary", "fold", "train", "explain", "report"}
    for unit in units:
        pods = b.unit_pods(job, unit, 2, SETTINGS)
        assert [p["kind"] for p in pods] == ["Pod"] * unit.nodes
        for pod in pods:
            labels = pod["metadata"]["labels"]
            assert labels[b.LABEL_ATTEMPT] == "2"
            assert labels[b.LABEL_UNIT] == unit.name
            assert labels[b.LABEL_STAGE] == unit.stage
            assert labels[b.LABEL_ROLE] == unit.kind
            # The stage engine decides every retry: Kubernetes restarts nothing by itself,
            # except the study server, which replays its journal in place.
            expected = "Always" if unit.kind == "study" else "Never"
            assert pod["spec"]["restartPolicy"] == expected, unit.name


def test_single_process_units_are_named_after_the_unit_training_pods_after_their_rank() -> None:
    job = sweep_job(augmentation={"enabled": True, "shards": 2}, explanation={"enabled": True},
                    training={"crossValidation": {"folds": 2}})
    pod_names = {u.name: [p["metadata"]["name"] for p in b.unit_pods(job, u, 0, SETTINGS)]
                 for u in all_units(job)}
    assert pod_names == {
        "augment-0": ["mnist-augment-0"], "augment-1": ["mnist-augment-1"],
        "augment-merge": ["mnist-augment-merge"], "study": ["mnist-study"],
        "trial-0": ["mnist-trial-0"], "tune-summary": ["mnist-tune-summary"],
        "fold-0": ["mnist-fold-0-0"], "fold-1": ["mnist-fold-1-0"], "train": ["mnist-train-0"],
        "explain": ["mnist-explain"], "report": ["mnist-report"],
    }


def test_explanation_is_one_pod_with_at_most_one_gpu() -> None:
    job = make_job(explanation={"enabled": True}, training={"resources": {"gpusPerNode": 4}})
    (pod,) = b.unit_pods(job, unit_of(job, "explain"), 0, SETTINGS)
    assert pod["metadata"]["labels"]["kubetrain.io/stage"] == "explanation"
    assert pod["spec"]["automountServiceAccountToken"] is False
    command = container(pod)["command"]
    assert command[:3] == ["python", "-m", "kubetrain.workloads.explain"]
    # A single-process unit asks for at most one GPU even when training uses four.
    assert container(pod)["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert b.unit_services(job, unit_of(job, "explain")) == []


def test_augmentation_shards_and_merge_commands() -> None:
    job = make_job(augmentation={"enabled": True, "shards": 2})
    (shard,) = b.unit_pods(job, unit_of(job, "augment-1"), 0, SETTINGS)
    (merge,) = b.unit_pods(job, unit_of(job, "augment-merge"), 0, SETTINGS)
    shard_cmd = container(shard)["command"]
    assert shard_cmd[:3] == ["python", "-m", "kubetrain.workloads.augment"]
    assert shard_cmd[3:7] == ["--shard", "1", "--shards", "2"]
    assert container(merge)["command"][3:6] == ["--merge", "--shards", "2"]


def test_study_server_pod_listens_behind_its_service() -> None:
    job = sweep_job()
    study = unit_of(job, "study")
    (pod,) = b.unit_pods(job, study, 0, SETTINGS)
    command = container(pod)["command"]
    assert command[:3] == ["python", "-m", "kubetrain.tuning.serve"]
    assert command[command.index("--port") + 1] == "13000"
    assert "--study-server" not in command
    (service,) = b.unit_services(job, study)
    assert service["metadata"]["name"] == "mnist-study"
    assert service["spec"]["selector"] == {"kubetrain.io/job": "mnist",
                                           "kubetrain.io/unit": "study"}
    assert service["spec"]["ports"] == [{"name": "grpc", "port": 13000, "protocol": "TCP"}]
    assert b.study_address(job) == "mnist-study:13000"


def test_trial_pods_reach_the_study_server_each_with_its_own_seed() -> None:
    job = sweep_job()
    tuning = plan(job.spec, "mnist").stage("tuning")
    assert tuning is not None and tuning.groups[0].sweep is not None
    commands = [container(b.unit_pods(job, tuning.groups[0].sweep.unit(i), 0, SETTINGS)[0])[
        "command"] for i in (0, 1)]
    for index, command in enumerate(commands):
        assert command[:3] == ["python", "-m", "kubetrain.workloads.trial"]
        assert command[command.index("--study") + 1] == "mnist"
        assert command[command.index("--sampler-seed") + 1] == str(trial_seed(3, index))
        assert command[command.index("--study-server") + 1] == "mnist-study:13000"
    assert b.unit_services(job, tuning.groups[0].sweep.unit(0)) == []


def test_summary_pod_reaches_the_study_server() -> None:
    job = sweep_job()
    (pod,) = b.unit_pods(job, unit_of(job, "tune-summary"), 0, SETTINGS)
    command = container(pod)["command"]
    assert command[:4] == ["python", "-m", "kubetrain.workloads.tune", "--summarize"]
    assert command[command.index("--study-server") + 1] == "mnist-study:13000"


def test_report_pod_writes_to_the_job_storage_and_reads_the_status_from_a_config_map() -> None:
    job = make_job()
    report = plan(job.spec, "mnist").report
    assert report is not None
    (pod,) = b.unit_pods(job, report, 0, SETTINGS, status_file=True)
    command = container(pod)["command"]
    assert command[:3] == ["python", "-m", "kubetrain.workloads.finish"]
    assert command[command.index("--storage") + 1] == "/data/shared/kubetrain/ml/mnist"
    assert command[-2:] == ["--status-file", "/etc/kubetrain-status/status.json"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "final-status")
    assert volume["configMap"]["name"] == "mnist-final-status"
    config_map = b.status_config_map(job, '{"phase": "Succeeded"}')
    assert config_map["metadata"]["name"] == "mnist-final-status"
    assert config_map["data"] == {"status.json": '{"phase": "Succeeded"}'}


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
    settings = WorkerSettings(default_pvc="cluster-runs")
    assert b.storage_claim(job, settings) == "cluster-runs"
    assert b.storage_dir(job, settings) == "/data/cluster-runs/kubetrain/ml/mnist"
    assert b.storage_claim(job, WorkerSettings()) is None
    # The job's own claim wins over the operator's default.
    assert b.storage_claim(make_job(), settings) == "shared"


def test_child_name_joins_parts_and_refuses_long_names() -> None:
    assert b.child_name("mnist", "train", "0") == "mnist-train-0"
    assert b.child_name("a" * 57, "train") == "a" * 57 + "-train"  # exactly 63
    with pytest.raises(ValueError, match="longer than 63"):
        b.child_name("a" * 58, "train")


def _custom_job(**training: Any) -> TrainingJob:
    manifest: dict[str, Any] = {
        "apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "own", "namespace": "ml", "uid": UID, "generation": 1},
        "spec": {"dataset": {"builtin": "digits"}, "storage": {"pvc": "shared"},
                 "training": {"command": ["python", "train.py"], **training}}}
    return parse_training_job(manifest)


def test_a_program_image_runs_beside_the_runner_in_one_pod() -> None:
    job = _custom_job(image="me/trainer:1", resources={
        "nodes": 2, "nprocPerNode": 2, "gpusPerNode": 2, "cpu": "4", "memory": "16Gi"})
    unit = plan(job.spec).unit("train")
    assert unit is not None
    pods = b.unit_pods(job, unit, 0, WorkerSettings(dev_source="/src"))
    spec = pods[1]["spec"]
    runner, program = spec["containers"]
    assert spec["shareProcessNamespace"] is True
    # The runner: kubetrain's image, not under torchrun (torchrun runs in the program's).
    assert runner["image"] == "kubetrain-worker:0.1.0"
    assert runner["command"][:3] == ["python", "-m", "kubetrain.workloads.script"]
    assert runner["command"][-2:] == ["--program-dir", "/kubetrain"]
    assert "nvidia.com/gpu" not in runner["resources"]["requests"]
    # The program: the user's image, the unit's resources, the gang's rendezvous settings,
    # the storage and the shared folder, but not kubetrain's source.
    assert program["image"] == "me/trainer:1" and program["command"][:2] == ["sh", "-c"]
    assert program["resources"]["requests"]["nvidia.com/gpu"] == "2"
    env = {e["name"]: e["value"] for e in program["env"]}
    assert env["PET_NODE_RANK"] == "1" and env["PET_NNODES"] == "2"
    mounts = {m["name"] for m in program["volumeMounts"]}
    assert {"program", "data0", "tmp"} <= mounts and "dev-source" not in mounts
    assert program["securityContext"]["allowPrivilegeEscalation"] is False


def test_a_program_without_its_own_image_runs_in_the_worker_container() -> None:
    job = _custom_job(resources={"nprocPerNode": 2})
    unit = plan(job.spec).unit("train")
    assert unit is not None
    (pod,) = b.unit_pods(job, unit, 0, SETTINGS)
    (container,) = pod["spec"]["containers"]
    assert container["command"][:4] == ["python", "-m", "torch.distributed.run", "--standalone"]
    assert "kubetrain.workloads.script" in container["command"]


def test_remediation_attempts_are_pods_of_their_own_with_the_attempts_changes() -> None:
    job = make_job(findings={"overfitting": {"action": "remediate"}})
    changes = '[{"field": "training.dropout", "before": 0.0, "after": 0.3}]'
    (pod,) = b.unit_pods(job, unit_of(job, "remediate-2"), 0, SETTINGS,
                         ("--remediation", changes))
    command = container(pod)["command"]
    assert command[:3] == ["python", "-m", "kubetrain.workloads.train"]
    assert command[command.index("--unit") + 1] == "remediate-2"
    assert command[command.index("--remediation") + 1] == changes
    (augment,) = b.unit_pods(job, unit_of(job, "remediate-2-augment"), 0, SETTINGS)
    command = container(augment)["command"]
    assert command[:3] == ["python", "-m", "kubetrain.workloads.augment"]
    assert "--whole" in command and command[command.index("--unit") + 1] == "remediate-2-augment"
    assert pod["metadata"]["name"] != augment["metadata"]["name"]


# ----- tracking credentials ----------------------------------------------------------------------


def test_mlflow_credentials_reach_the_tracked_pods_as_secret_references_only() -> None:
    job = make_job(tracking={"mlflow": {"uri": "http://mlflow.mlops:5000",
                                        "credentials": {"secret": "mlflow-creds"}}},
                   explanation={"enabled": True})
    train_env = b.pod_spec(job, unit_of(job, "train"), SETTINGS, ["train"])["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in train_env if "valueFrom" in e}
    assert set(refs) == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                         "MLFLOW_TRACKING_TOKEN"}
    assert all(r == {"name": "mlflow-creds", "key": k, "optional": True}
               for k, r in refs.items())
    assert not any("value" in e and "MLFLOW" in e["name"] for e in train_env)
    report = unit_of(job, "report")
    report_env = b.pod_spec(job, report, SETTINGS, ["report"])["containers"][0]["env"]
    assert not any(e["name"].startswith("MLFLOW_") for e in report_env)


def test_no_tracking_credentials_without_a_secret() -> None:
    job = make_job(tracking={"mlflow": {"uri": "http://mlflow.mlops:5000"}})
    env = b.pod_spec(job, unit_of(job, "train"), SETTINGS, ["train"])["containers"][0]["env"]
    assert not any(e["name"].startswith("MLFLOW_") for e in env)
