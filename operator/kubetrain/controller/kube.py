"""The operator's own small Kubernetes REST client: JSON over one urllib3 connection pool.

Why not the ``kubernetes`` package: importing it builds ~900 model classes, about 50 MiB of the
operator's resident memory (kopf imports it too, when it is installed, only to recognise its
models). The operator speaks plain JSON to a handful of endpoints (its children, its own
TrainingJobs, its Lease), so this module is all it needs; ``kubetrain operator`` keeps the package
out of its process (``block_kubernetes_package``) and the operator image does not install it.
The user-side client (``kubetrain.client``: watch, logs, exec into pods) still uses the package.

Credentials: kopf's own login functions, the same kopf uses for its watches: the pod's service
account in a cluster, else the kubeconfig ($KUBECONFIG or ~/.kube/config; client certificates,
a token or basic auth; an ``exec`` or ``auth-provider`` plugin is not supported). Loaded once; a
401 (a rotated service-account token) loads them again and retries the request once.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import tempfile
import threading
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from ..api.resource import GROUP, PLURAL, VERSION

USER_AGENT = "kubetrain-operator"
REQUEST_TIMEOUT = 30.0  # seconds; kopf's own requests use the same (handlers.configure)


class ApiError(Exception):
    """The API server answered an error (``status`` is its HTTP status; 0: no answer)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}" + (f": {message}" if message else ""))
        self.status, self.reason, self.message = status, reason, message


class LoginError(RuntimeError):
    """No usable credentials for the API server."""


@dataclass(frozen=True)
class Resource:
    """A namespaced resource kind as the REST API names it."""

    group: str  # "" for the core API
    version: str
    plural: str

    def path(self, namespace: str | None, name: str | None = None,
             subresource: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        parts = [base] + ([f"namespaces/{quote(namespace, safe='')}"] if namespace else [])
        parts.append(self.plural)
        if name is not None:
            parts.append(quote(name, safe=""))
        if subresource is not None:
            parts.append(subresource)
        return "/".join(parts)


PODS = Resource("", "v1", "pods")
SERVICES = Resource("", "v1", "services")
CONFIG_MAPS = Resource("", "v1", "configmaps")
EVENTS = Resource("", "v1", "events")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
TRAINING_JOBS = Resource(GROUP, VERSION, PLURAL)
KINDS = {"Pod": PODS, "Service": SERVICES, "ConfigMap": CONFIG_MAPS}


def block_kubernetes_package() -> None:
    """Keep the ``kubernetes`` package out of this process (call before importing kopf): kopf
    then neither imports it nor logs in through it. Nothing in the operator uses it."""
    if "kubernetes" not in sys.modules:
        sys.modules["kubernetes"] = None  # type: ignore[assignment]  # import raises ImportError


@dataclass(frozen=True)
class Credentials:
    server: str
    headers: dict[str, str]
    ssl_context: ssl.SSLContext | None  # None: plain http
    verify: bool = True  # False: insecure-skip-tls-verify


@cache
def _scratch() -> str:
    return tempfile.mkdtemp(prefix="kubetrain-kube-")


def _pem_file(data: str | bytes, name: str) -> str:
    """A kubeconfig's base64 ``*-data`` field as a file (the ssl module loads files only).
    Only then is a temporary folder made: a pod's root filesystem may be read-only."""
    raw = data if isinstance(data, bytes) else data.encode()
    try:
        pem = base64.b64decode(raw, validate=True)
    except ValueError:
        pem = raw  # already PEM
    path = os.path.join(_scratch(), name)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        handle.write(pem)
    return path


def _kubeconfig_plugin() -> str | None:
    """The field of the current kubeconfig user that needs a plugin, if any."""
    import yaml

    paths = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    for path in (p for p in paths.split(os.pathsep) if p and os.path.exists(p)):
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle) or {}
        context_name = config.get("current-context")
        contexts = {c["name"]: c.get("context") or {} for c in config.get("contexts") or []}
        users = {u["name"]: u.get("user") or {} for u in config.get("users") or []}
        user = users.get(contexts.get(context_name, {}).get("user"), {})
        for field in ("exec", "auth-provider"):
            if field in user and not (field == "auth-provider" and
                                      (user[field].get("config") or {}).get("access-token")):
                return f"users[].user.{field} (in {path})"
    return None


def load_credentials() -> Credentials:
    """The service account in a pod, else the kubeconfig (through kopf's login functions)."""
    import kopf

    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or \
        kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise LoginError("no credentials for the Kubernetes API: not in a pod (no service "
                         "account token) and no kubeconfig ($KUBECONFIG or ~/.kube/config)")
    headers = {"User-Agent": USER_AGENT}
    if info.token:
        headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
    elif info.username and info.password:
        headers.update(urllib3.make_headers(basic_auth=f"{info.username}:{info.password}"))
    elif not (info.certificate_path or info.certificate_data):
        plugin = _kubeconfig_plugin()
        if plugin:
            raise LoginError(f"the kubeconfig's credentials need a plugin, which the operator "
                             f"does not run: {plugin}; use a client certificate or a token")
    if not info.server.startswith("https:"):
        return Credentials(info.server.rstrip("/"), headers, None)
    context = ssl.create_default_context(
        cafile=(str(info.ca_path) if info.ca_path else
                _pem_file(info.ca_data, "ca.crt") if info.ca_data else None))
    if info.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    certificate = (str(info.certificate_path) if info.certificate_path else
                   _pem_file(info.certificate_data, "client.crt")
                   if info.certificate_data else None)
    if certificate:
        key = (str(info.private_key_path) if info.private_key_path else
               _pem_file(info.private_key_data, "client.key")
               if info.private_key_data else None)
        context.load_cert_chain(certificate, key)
    return Credentials(info.server.rstrip("/"), headers, context, verify=not info.insecure)


class Kube:
    """Requests to the API server; thread-safe (the handlers run on several threads)."""

    def __init__(self, credentials: Credentials | None = None, *, pool_size: int = 16,
                 timeout: float = REQUEST_TIMEOUT) -> None:
        self._lock = threading.Lock()
        self._credentials = credentials or load_credentials()
        self._pool_size = pool_size
        self._http = self._pool(self._credentials)
        self.timeout = timeout
        self.user_agent = USER_AGENT

    def _pool(self, credentials: Credentials) -> urllib3.PoolManager:
        insecure: dict[str, Any] = {} if credentials.verify else {
            "cert_reqs": ssl.CERT_NONE, "assert_hostname": False}
        return urllib3.PoolManager(num_pools=2, maxsize=self._pool_size, block=False,
                                   ssl_context=credentials.ssl_context, retries=False,
                                   **insecure)

    def _relogin(self) -> None:
        with self._lock:
            self._credentials = load_credentials()
            self._http = self._pool(self._credentials)

    def request(self, method: str, path: str, *, query: dict[str, Any] | None = None,
                body: Any = None, content_type: str = "application/json",
                timeout: float | None = None) -> bytes:
        """The response's body; ApiError for an error status (or no answer: status 0)."""
        url = path + ("?" + urlencode(query) if query else "")
        payload = None if body is None else json.dumps(body).encode()
        send = urllib3.Timeout(total=timeout or self.timeout)
        response = self._send(method, url, payload, content_type, send)
        if response.status == 401:  # a rotated service-account token: log in again, once
            self._relogin()
            response = self._send(method, url, payload, content_type, send)
        if response.status >= 400:
            raise _error(response.status, response.reason or "", response.data)
        data: bytes = response.data
        return data

    def _send(self, method: str, url: str, payload: bytes | None, content_type: str,
              timeout: urllib3.Timeout) -> urllib3.BaseHTTPResponse:
        credentials, http = self._credentials, self._http
        headers = {**credentials.headers, "User-Agent": self.user_agent,
                   "Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = content_type
        try:
            return http.request(method, credentials.server + url, body=payload,
                                headers=headers, preload_content=True, timeout=timeout)
        except urllib3.exceptions.HTTPError as error:
            raise ApiError(0, f"no answer from the API server ({type(error).__name__})",
                           str(error)) from None

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.request(method, path, **kwargs) or b"{}")
        return result

    def get(self, resource: Resource, namespace: str, name: str,
            timeout: float | None = None) -> dict[str, Any]:
        return self._json("GET", resource.path(namespace, name), timeout=timeout)

    def list(self, resource: Resource, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        items: list[dict[str, Any]] = self._json(
            "GET", resource.path(namespace), query=query).get("items") or []
        return items

    def create(self, resource: Resource, namespace: str, body: dict[str, Any],
               timeout: float | None = None) -> dict[str, Any]:
        return self._json("POST", resource.path(namespace), body=body, timeout=timeout)

    def replace(self, resource: Resource, namespace: str, name: str, body: dict[str, Any],
                timeout: float | None = None) -> dict[str, Any]:
        return self._json("PUT", resource.path(namespace, name), body=body, timeout=timeout)

    def merge_patch(self, resource: Resource, namespace: str, name: str,
                    patch: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        """A JSON merge patch; with ``metadata.resourceVersion`` in it, conditional on that
        version (409 Conflict when the object changed since)."""
        return self._json("PATCH", resource.path(namespace, name, subresource), body=patch,
                          content_type="application/merge-patch+json")

    def delete(self, resource: Resource, namespace: str, name: str, *,
               grace_period_seconds: int | None = None, resource_version: str | None = None,
               timeout: float | None = None) -> None:
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if resource_version is not None:
            options["preconditions"] = {"resourceVersion": resource_version}
        self.request("DELETE", resource.path(namespace, name), body=options, timeout=timeout)

    def pod_log(self, namespace: str, name: str, container: str, tail_lines: int) -> str:
        data = self.request("GET", PODS.path(namespace, name, "log"),
                            query={"container": container, "tailLines": tail_lines})
        return data.decode("utf-8", errors="replace")


def _error(status: int, reason: str, data: bytes) -> ApiError:
    message = ""
    try:
        message = str(json.loads(data).get("message") or "")
    except (ValueError, AttributeError):
        message = data[:200].decode("utf-8", errors="replace")
    return ApiError(status, reason, message)


@cache
def api() -> Kube:
    """The process's shared client (credentials loaded once)."""
    return Kube()


def identify(name: str) -> None:
    """Name this process to the API server (user agent, hence the ``manager`` of the objects it
    creates in their managedFields): which replica created a pod stays on record."""
    from .. import __version__

    api().user_agent = f"{name}/{__version__}"
