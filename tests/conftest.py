"""Fixtures and hooks shared by the tests; helpers are in support.py.

Cluster tests (marked ``cluster``) skip with the reason where no cluster or image is usable.
With ``KUBETRAIN_REQUIRE_CLUSTER=1`` (set by ``.ci/run`` when CI has a cluster) such a skip is a
failure instead. Every run ends with a line that says how many cluster tests ran and passed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflowserver import mlflow_server  # noqa: F401 - a fixture for the tracking tests
from s3server import s3_server  # noqa: F401 - a fixture for the workload and cluster tests
from support import cluster_env

# The kubernetes client fixes its default kubeconfig path (KUBECONFIG, else ~/.kube/config)
# when it is first imported, and tests that import it are collected before any fixture runs:
# the machine's cluster must be in the environment before that, or the in-process operator
# (kopf logs in through that client) finds no cluster and does nothing.
if not os.environ.get("KUBECONFIG"):
    _env = cluster_env()
    if _env.get("KUBECONFIG"):
        os.environ["KUBECONFIG"], os.environ["PATH"] = _env["KUBECONFIG"], _env["PATH"]

REQUIRE_CLUSTER_VAR = "KUBETRAIN_REQUIRE_CLUSTER"
# nodeid -> "passed" | "failed" | "xfailed" | "skipped" | "required" (a skip made a failure)
_cluster_outcomes: dict[str, str] = {}
_cluster_ran: set[str] = set()


def _require_cluster() -> bool:
    return os.environ.get(REQUIRE_CLUSTER_VAR, "") not in ("", "0")


@pytest.fixture
def write_manifest(tmp_path: Path) -> Any:
    def write(manifest: dict[str, Any], name: str = "job.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        return path

    return write


@pytest.hookimpl(tryfirst=True)  # before `-m cluster` / `-m "not cluster"` select
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the ``cluster`` fixture is a cluster test, marked or not."""
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
                "cluster"):
            item.add_marker(pytest.mark.cluster)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


CLUSTER_TEST = ("kubetrain_cluster", True)
REQUIRED_SKIP = ("kubetrain_required_cluster", True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Tags a cluster test's reports; with KUBETRAIN_REQUIRE_CLUSTER=1 its skip is a failure.

    This runs where the test runs (an xdist worker too); the counting is done from the tags in
    ``pytest_runtest_logreport``, which runs where the summary is written.
    """
    outcome = yield
    if item.get_closest_marker("cluster") is None:
        return
    report: pytest.TestReport = outcome.get_result()
    report.user_properties.append(CLUSTER_TEST)
    if report.skipped and not hasattr(report, "wasxfail") and _require_cluster():
        reason = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = (f"cluster test skipped, which {REQUIRE_CLUSTER_VAR}=1 makes a "
                           f"failure: {reason}")
        report.user_properties.append(REQUIRED_SKIP)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    properties = getattr(report, "user_properties", ())
    if CLUSTER_TEST not in properties:
        return
    required = REQUIRED_SKIP in properties
    skipped = report.skipped and not hasattr(report, "wasxfail")
    if report.when == "call" and not (skipped or required):
        _cluster_ran.add(report.nodeid)
    previous = _cluster_outcomes.get(report.nodeid)
    if required:
        _cluster_outcomes[report.nodeid] = "required"
    elif report.failed:
        _cluster_outcomes[report.nodeid] = "failed"
    elif hasattr(report, "wasxfail"):
        _cluster_outcomes[report.nodeid] = "xfailed"
    elif report.skipped:
        _cluster_outcomes[report.nodeid] = "skipped"
    elif previous is None:
        _cluster_outcomes[report.nodeid] = "passed"


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    """A required cluster test that skipped shows as FAILED (not as a setup ERROR)."""
    # a collection report has no user_properties
    if report.failed and REQUIRED_SKIP in getattr(report, "user_properties", ()):
        return "failed", "F", "FAILED"
    return None


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    outcomes = list(_cluster_outcomes.values())
    skipped = outcomes.count("skipped") + outcomes.count("required")
    line = (f"cluster tests: {len(_cluster_ran)} ran, {outcomes.count('passed')} passed, "
            f"{outcomes.count('failed')} failed, {skipped} skipped")
    if outcomes.count("xfailed"):
        line += f", {outcomes.count('xfailed')} xfailed"
    if _require_cluster():
        line += f" ({REQUIRE_CLUSTER_VAR}=1: a skipped cluster test fails the run)"
    terminalreporter.write_line(line, bold=True)
