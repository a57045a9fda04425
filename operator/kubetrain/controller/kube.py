"""Kubernetes API clients for the operator and its commands (cleanup, check).

Credentials: the pod's service account in a cluster, else the kubeconfig. Loaded once.
"""

from __future__ import annotations

from functools import cache

from kubernetes import client, config


@cache
def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def core() -> client.CoreV1Api:
    return client.CoreV1Api(_api_client())


def batch() -> client.BatchV1Api:
    return client.BatchV1Api(_api_client())


def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(_api_client())


def identify(name: str) -> None:
    """Name this process to the API server (user agent, hence the ``manager`` of the objects it
    creates in their managedFields): which replica created a pod stays on record."""
    from .. import __version__

    _api_client().user_agent = f"{name}/{__version__}"
