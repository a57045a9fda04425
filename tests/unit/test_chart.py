"""The Helm chart (charts/kubetrain) and the plain manifests generated from it.

Rendered with the real `helm` binary (on PATH, or the one the local cluster installed); the
operator's own parser reads the rendered ConfigMap, so chart and operator cannot drift apart.
Installing it on a cluster is tests/integration/test_install.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest
import yaml
from kubetrain.controller.settings import parse_config
from support import REPO, helm, tool

CHART = REPO / "charts" / "kubetrain"
HELM = tool("helm")
pytestmark = pytest.mark.skipif(HELM is None, reason="helm not found (hack/local-cluster.sh up "
                                "installs it)")


def render(*sets: str, namespace: str = "kubetrain-system") -> list[dict[str, Any]]:
    """`helm template`; a value given as key:=json is passed with --set-json (numbers)."""
    args = [a for s in sets
            for a in (("--set-json", s.replace(":=", "=", 1)) if ":=" in s else ("--set", s))]
    out = helm("template", "kubetrain", str(CHART), "-n", namespace, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def hooks(doc: dict[str, Any]) -> str | None:
    return (doc["metadata"].get("annotations") or {}).get("helm.sh/hook")


def test_lint_is_clean() -> None:
    result = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout, result.stdout


def test_chart_crds_are_the_generated_ones() -> None:
    for crd in (REPO / "crds").glob("*.yaml"):
        assert (CHART / "crds" / crd.name).read_text() == crd.read_text(), \
            f"charts/kubetrain/crds/{crd.name} differs from crds/: run `make crd`"


def test_plain_manifests_are_rendered_from_the_chart() -> None:
    rendered = subprocess.run(["bash", str(REPO / "hack" / "render-manifests.sh")],
                              capture_output=True, text=True, check=True,
                              env={"PATH": f"{HELM.rsplit('/', 1)[0]}:/usr/bin:/bin"}).stdout
    assert (REPO / "manifests" / "kubetrain.yaml").read_text() == rendered, \
        "manifests/kubetrain.yaml is out of date: run `make manifests`"
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds[:2] == ["CustomResourceDefinition", "Namespace"]  # the order apply needs
    assert "Deployment" in kinds and "Pod" not in kinds and "Job" not in kinds  # no hooks
    assert all(hooks(d) is None for d in docs)
    assert all(d["metadata"].get("namespace") in (None, "kubetrain-system") for d in docs)


def test_default_install() -> None:
    docs = render()
    installed = sorted(d["kind"] for d in docs if hooks(d) is None)
    assert installed == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Role",
                         "RoleBinding", "Service", "ServiceAccount"]
    (deployment,) = by_kind(docs, "Deployment")
    spec = deployment["spec"]
    # one replica, with leader election: an upgrade rolls, the new pod waits for the Lease
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "kubetrain-operator:0.1.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"]["memory"]
    assert "checksum/config" in spec["template"]["metadata"]["annotations"]
    # the pre-delete hook and the test
    assert {(d["kind"], hooks(d)) for d in docs if hooks(d)} == {
        ("Job", "pre-delete"), ("Pod", "test"), ("ServiceAccount", "test"), ("Role", "test"),
        ("RoleBinding", "test")}
    (cleanup,) = by_kind(docs, "Job")
    assert cleanup["spec"]["template"]["spec"]["serviceAccountName"] == \
        pod["serviceAccountName"]


def _config(docs: list[dict[str, Any]]) -> Any:
    (config_map,) = by_kind(docs, "ConfigMap")
    return parse_config(yaml.safe_load(config_map["data"]["config.yaml"]), environ={})


def test_config_map_is_what_the_operator_reads() -> None:
    config = _config(render())
    assert (config.worker_image, config.default_pvc, config.namespaces) == \
        ("kubetrain-worker:0.1.0", "kubetrain-data", [])
    config = _config(render("worker.image.tag=0.1.0-cuda", "config.defaultPVC=",
                            "config.prices.gpuHour:=1.5", "config.prices.currency=EUR",
                            "watchNamespaces={ml,research}", "metrics.port=9300",
                            "worker.image.pullPolicy=Always",
                            'worker.imagePullSecrets:=[{"name": "regcred"}, {"name": "b"}]'))
    assert config.worker_image == "kubetrain-worker:0.1.0-cuda"
    assert config.default_pvc is None and config.namespaces == ["ml", "research"]
    assert (config.prices.gpu_hour, config.prices.currency) == (1.5, "EUR")
    assert config.metrics_port == 9300 and config.image_pull_policy == "Always"
    assert config.worker_settings().image_pull_secrets == ("regcred", "b")


def test_queue_limits_reach_the_operator() -> None:
    assert not _config(render()).queue_limits().enabled  # the default: no queue
    config = _config(render("config.maxRunningJobs=4", "config.maxRunningJobsPerNamespace=2"))
    assert (config.max_running_jobs, config.max_running_jobs_per_namespace) == (4, 2)


def test_namespaced_rbac_has_no_cluster_rights() -> None:
    docs = render("rbac.scope=namespaced", "watchNamespaces={ml,research}")
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    roles = [d for d in by_kind(docs, "Role") if hooks(d) is None]
    assert sorted((r["metadata"]["namespace"], r["metadata"]["name"]) for r in roles) == [
        ("kubetrain-system", "kubetrain-leader-election"), ("ml", "kubetrain"),
        ("research", "kubetrain")]
    bindings = [d for d in by_kind(docs, "RoleBinding") if hooks(d) is None]
    assert all(b["subjects"][0]["namespace"] == "kubetrain-system" for b in bindings)
    # helm test reconciles its job in a watched namespace
    (test_role,) = [d for d in by_kind(docs, "Role") if hooks(d) == "test"]
    assert test_role["metadata"]["namespace"] == "ml"


def test_namespaced_rbac_needs_namespaces() -> None:
    result = helm("template", "kubetrain", str(CHART), "--set", "rbac.scope=namespaced",
                  check=False)
    assert result.returncode != 0 and "rbac.scope=namespaced needs watchNamespaces" in \
        result.stderr


def test_operator_rules_cover_what_it_creates() -> None:
    (role,) = by_kind(render(), "ClusterRole")
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    for group, resource in [("", "pods"), ("", "services"), ("", "configmaps"),
                            ("batch", "jobs")]:
        assert {"create", "list", "get"} <= verbs[(group, resource)], resource
    assert {"watch", "patch", "delete"} <= verbs[("kubetrain.io", "trainingjobs")]
    assert "patch" in verbs[("kubetrain.io", "trainingjobs/status")]
    assert "*" not in {v for vs in verbs.values() for v in vs}


def _operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_two_replicas_elect_a_leader_on_a_lease_in_the_release_namespace() -> None:
    from kubetrain.cli import build_parser
    from kubetrain.controller.lease import election_config

    docs = render("replicas=2", "leaderElection.renewDeadlineSeconds:=6.5", namespace="ops")
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    container = _operator_container(docs)
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
                   "POD_UID": "metadata.uid"}
    # the operator's own parser reads the rendered arguments
    args = build_parser().parse_args(["operator", *container["args"]])
    config = election_config(lease_name=args.lease_name, namespace=args.lease_namespace,
                             identity=args.identity, lease_seconds=args.lease_seconds,
                             renew_deadline_seconds=args.renew_deadline_seconds,
                             retry_seconds=args.retry_seconds,
                             environ={"POD_NAME": "kubetrain-abc"})
    assert args.leader_elect
    assert (config.lease_name, config.namespace, config.identity) == ("kubetrain", "ops",
                                                                      "kubetrain-abc")
    assert (config.lease_seconds, config.renew_deadline_seconds, config.retry_seconds) == \
        (10, 6.5, 2)
    (role,) = [d for d in by_kind(docs, "Role") if hooks(d) is None]
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update", "delete"]}]
    (binding,) = [d for d in by_kind(docs, "RoleBinding") if hooks(d) is None]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_without_leader_election_one_replica_recreated() -> None:
    docs = render("leaderElection.enabled=false")
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert not any(a.startswith("--leader-elect") for a in _operator_container(docs)["args"])
    assert not [d for d in by_kind(docs, "Role") if hooks(d) is None]


@pytest.mark.parametrize(("sets", "message"), [
    (("replicas=2", "leaderElection.enabled=false"), "replicas > 1 needs leaderElection"),
    (("leaderElection.leaseSeconds=7",),
     "needs retrySeconds < renewDeadlineSeconds < leaseSeconds"),
    (("replicas=0",), "/replicas"),
])
def test_leader_election_values_are_checked(sets: tuple[str, ...], message: str) -> None:
    args = [a for s in sets for a in ("--set", s)]
    result = helm("template", "kubetrain", str(CHART), *args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_service_monitor_is_optional() -> None:
    assert not by_kind(render(), "ServiceMonitor")
    (monitor,) = by_kind(render("metrics.serviceMonitor.enabled=true",
                                "metrics.serviceMonitor.labels.release=prom"), "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


@pytest.mark.parametrize(("value", "message"), [
    ("metrics.port=http", "/metrics/port"),
    ("rbac.scope=everywhere", "/rbac/scope"),
    ("imagePullPolicy=Never", "additional properties 'imagePullPolicy' not allowed"),
    ("config.prices.currency=dollars", "/config/prices/currency"),
    ("config.maxRunningJobs=-1", "/config/maxRunningJobs"),
])
def test_schema_refuses_bad_values(value: str, message: str) -> None:
    result = helm("template", "kubetrain", str(CHART), "--set", value, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def _leaves(schema: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        if sub.get("type") == "object" and "properties" in sub:
            out.update(_leaves(sub, path + "."))
        else:
            out[path] = sub
    return out


def _value(values: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        values = values[part]
    return values


def test_readme_values_table_matches_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    leaves = _leaves(schema)
    for path in leaves:  # values.yaml sets every value the schema knows
        _value(values, path)
    readme = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `([\w.]+)` \| `(.*?)` \| (.+?) \|$", readme, flags=re.M)
    table = {key: (default, about) for key, default, about in rows}
    assert sorted(table) == sorted(leaves), "README's values table differs from the schema"
    for path, (default, about) in table.items():
        assert yaml.safe_load(default) == _value(values, path), f"{path}: default in README"
        assert about.strip(), path
