"""The operator's configuration: a YAML file (the Helm chart's ConfigMap) plus env overrides.

    workerImage: kubetrain-worker:0.1.0   # image of every work unit's pod
    imagePullPolicy: IfNotPresent
    imagePullSecrets: []                  # secrets (per job namespace) for the worker image
    defaultPVC: kubetrain-data            # claim for jobs without spec.storage.pvc
    namespaces: []                        # watched namespaces; empty: the whole cluster
    prices: {cpuHour: 0.0316, memoryGiBHour: 0.0042, gpuHour: 2.93, currency: USD}
    metricsPort: 9090                     # Prometheus /metrics; 0 turns it off
    timerSeconds: 5                       # how often active jobs are observed (periodic pass)
    maxRunningJobs: 0                     # jobs running at once, cluster-wide; 0: no limit
    maxRunningJobsPerNamespace: 0         # jobs running at once in one namespace; 0: no limit

Environment variables override the file (KUBETRAIN_WORKER_IMAGE, KUBETRAIN_IMAGE_PULL_POLICY,
KUBETRAIN_DEFAULT_PVC, KUBETRAIN_NAMESPACES (comma separated), KUBETRAIN_METRICS_PORT,
KUBETRAIN_TIMER_SECONDS, KUBETRAIN_MAX_RUNNING_JOBS, KUBETRAIN_MAX_RUNNING_JOBS_PER_NAMESPACE,
KUBETRAIN_DEV_SOURCE), so the operator also runs without a file.

Prices of a job, most specific first: the fields its spec sets in findings.cost.prices, then its
findings.cost.priceConfigMap, then this file's table, then the built-in defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from .. import __version__
from ..api.base import ApiModel
from ..api.resource import ManifestError, format_validation_error
from ..api.spec import PricesSpec
from .builders import WorkerSettings
from .queue import Limits

CONFIG_ENV = "KUBETRAIN_CONFIG"
_ENV = {
    "KUBETRAIN_WORKER_IMAGE": "workerImage",
    "KUBETRAIN_IMAGE_PULL_POLICY": "imagePullPolicy",
    "KUBETRAIN_DEFAULT_PVC": "defaultPVC",
    "KUBETRAIN_NAMESPACES": "namespaces",
    "KUBETRAIN_METRICS_PORT": "metricsPort",
    "KUBETRAIN_TIMER_SECONDS": "timerSeconds",
    "KUBETRAIN_MAX_RUNNING_JOBS": "maxRunningJobs",
    "KUBETRAIN_MAX_RUNNING_JOBS_PER_NAMESPACE": "maxRunningJobsPerNamespace",
    "KUBETRAIN_DEV_SOURCE": "devSource",
}


class OperatorConfig(ApiModel):
    """Settings of one operator installation (defaults for what TrainingJob specs leave out)."""

    worker_image: str = Field(default=f"kubetrain-worker:{__version__}", min_length=1)
    """Image of the pods that run work units."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Pull policy of the worker pods."""
    image_pull_secrets: list[str] = Field(default_factory=list)
    """Secrets, in each job's namespace, for pulling the worker image."""
    default_pvc: str | None = Field(default=None, alias="defaultPVC")
    """PersistentVolumeClaim (in the job's namespace) for jobs without spec.storage.pvc."""
    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch; empty means every namespace."""
    prices: PricesSpec = Field(default_factory=PricesSpec)
    """Price table for jobs that set no prices of their own."""
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    """Port of the Prometheus /metrics endpoint; 0 turns it off."""
    timer_seconds: float = Field(default=5.0, gt=0, le=3600)
    """Seconds between observations of a running job."""
    max_running_jobs: int = Field(default=0, ge=0)
    """TrainingJobs running at once, cluster-wide (the watched namespaces); the others wait in
    phase Queued. 0: no limit."""
    max_running_jobs_per_namespace: int = Field(default=0, ge=0)
    """TrainingJobs running at once in one namespace. 0: no limit."""
    dev_source: str | None = None
    """Development only: host folder with the package, mounted into worker pods."""

    def queue_limits(self) -> Limits:
        return Limits(cluster=self.max_running_jobs,
                      namespace=self.max_running_jobs_per_namespace)

    def worker_settings(self) -> WorkerSettings:
        return WorkerSettings(worker_image=self.worker_image,
                                image_pull_policy=self.image_pull_policy,
                                image_pull_secrets=tuple(self.image_pull_secrets),
                                default_pvc=self.default_pvc or None,
                                dev_source=self.dev_source or None)


def parse_config(document: Any, environ: Mapping[str, str] | None = None,
                 source: str = "operator configuration") -> OperatorConfig:
    """Validate a parsed config document, with environment overrides; ManifestError on problems."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ManifestError(["(top level): the operator configuration must be a YAML mapping"],
                            source)
    merged = dict(document)
    from_env = {}
    for variable, field in _ENV.items():
        value = (environ or {}).get(variable)
        if value is None or value == "":
            continue
        merged[field] = ([n.strip() for n in value.split(",") if n.strip()]
                         if field == "namespaces" else value)
        from_env[field] = variable
    try:
        return OperatorConfig.model_validate(merged)
    except ValidationError as error:
        problems = []
        for problem in format_validation_error(error):
            field = problem.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
            problems.append(problem.replace(field, f"{field} (from ${from_env[field]})", 1)
                            if field in from_env else problem)
        raise ManifestError(problems, source) from None


def load_config(path: str | Path | None = None,
                environ: Mapping[str, str] | None = None) -> OperatorConfig:
    """The configuration from ``path`` (or $KUBETRAIN_CONFIG; none: defaults) plus env overrides."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    if path is None:
        return parse_config({}, environ, "operator environment")
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ManifestError([f"(file): cannot read {path}: {error.strerror}"], str(path)) \
            from None
    except yaml.YAMLError as error:
        raise ManifestError([f"(file): not valid YAML: {error}"], str(path)) from None
    return parse_config(document, environ, str(path))


_PRICE_KEYS = ("cpuHour", "memoryGiBHour", "gpuHour", "currency")


def resolve_prices(spec_prices: PricesSpec, config_map: Mapping[str, str] | None,
                   table: PricesSpec, config_map_name: str | None = None) -> PricesSpec:
    """A job's prices: its own fields, then its price ConfigMap's keys, then the operator table.

    Raises ManifestError naming spec.findings.cost.priceConfigMap when the ConfigMap holds an
    unknown key or a value that is not a price.
    """
    values: dict[str, Any] = table.model_dump(by_alias=True)
    if config_map is not None:
        where = f"spec.findings.cost.priceConfigMap ({config_map_name})"
        unknown = sorted(set(config_map) - set(_PRICE_KEYS))
        if unknown:
            raise ManifestError([f"{where}: unknown keys {', '.join(unknown)}; allowed: "
                                 f"{', '.join(_PRICE_KEYS)}"])
        missing = [k for k in _PRICE_KEYS[:3] if k not in config_map]
        if config_map.get("currency", table.currency).strip() != table.currency and missing:
            raise ManifestError([f"{where}: sets currency {config_map['currency'].strip()} but "
                                 f"not {', '.join(missing)}, which would come from the "
                                 f"operator's {table.currency} prices; set all of "
                                 f"{', '.join(_PRICE_KEYS)}"])
        values.update({k: v.strip() for k, v in config_map.items()})
    for name in spec_prices.model_fields_set:
        field = PricesSpec.model_fields[name]
        values[field.alias or name] = getattr(spec_prices, name)
    try:
        return PricesSpec.model_validate(values)
    except ValidationError as error:
        problems = [f"spec.findings.cost.priceConfigMap ({config_map_name}): {p}"
                    for p in format_validation_error(error)]
        raise ManifestError(problems) from None


_loaded: dict[tuple[str | None, ...], OperatorConfig] = {}


def current_config() -> OperatorConfig:
    """The configuration for the present environment, read once per distinct environment."""
    key = (os.environ.get(CONFIG_ENV), *(os.environ.get(name) for name in _ENV))
    if key not in _loaded:
        _loaded[key] = load_config()
    return _loaded[key]
