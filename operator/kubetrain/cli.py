"""The ``kubetrain`` command: run a TrainingJob here, print the CRD, validate manifests."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from . import __version__
from .api import ManifestError, load_training_job
from .api.status import Phase, TrainingJobStatus

EXIT_INVALID = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _cmd_run(args: argparse.Namespace) -> int:
    from .local.display import Display
    from .local.executor import JobInterrupted, LocalExecutor

    err = Console(stderr=True)
    job = load_training_job(args.file)
    manifest_dir = args.file.resolve().parent
    if args.storage:
        storage = args.storage
    elif job.spec.storage.path:
        storage = manifest_dir / job.spec.storage.path
    else:
        storage = Path.cwd() / "kubetrain-runs" / job.metadata.name
    show = args.progress if args.progress is not None else err.is_terminal
    executor = LocalExecutor(job, base_dir=manifest_dir, storage=storage.resolve(),
                             display=Display(enabled=show, console=err), resume=args.resume)
    err.print(f"[bold]kubetrain[/] {__version__}: running TrainingJob "
              f"[bold]{job.metadata.name}[/] (stages: {', '.join(executor.plan.stage_names)}; "
              f"storage {storage})")
    try:
        result = executor.run()
    except JobInterrupted:
        err.print(f"[red]interrupted[/]: status written to {storage / 'status.yaml'}; "
                  "`kubetrain run --resume` continues from the last checkpoint")
        return EXIT_INTERRUPTED
    text = yaml.safe_dump(result.to_manifest(), sort_keys=False)
    if args.output:
        args.output.write_text(text)
        err.print(f"status written to {args.output}")
    else:
        sys.stdout.write(text)
    status = result.status
    assert status is not None
    over = status.findings.overfitting
    err.print(f"[bold]{status.phase}[/]: best {status.best or '-'}; overfitting "
              f"{over.verdict if over else '-'}; cost {status.findings.cost.total:.6f} "
              f"{status.findings.cost.currency}; report {status.artifacts.get('report')}"
              if status.findings.cost else f"[bold]{status.phase}[/]")
    return 0 if status.phase == Phase.SUCCEEDED else EXIT_FAILED


def _cmd_crd(args: argparse.Namespace) -> int:
    from .api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def _cmd_operator(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from .controller.kube import block_kubernetes_package

    block_kubernetes_package()  # ~50 MiB less: the operator has its own small client
    import kopf

    from .controller.settings import CONFIG_ENV, load_config

    if args.config:
        os.environ[CONFIG_ENV] = str(args.config)
    if args.namespace:  # -n overrides the configuration's namespaces (the handlers read them)
        os.environ["KUBETRAIN_NAMESPACES"] = ",".join(args.namespace)
    config = load_config()  # a bad configuration stops here, before kopf starts
    from .controller import leader, lease, metrics

    election = lease.election_config(
        lease_name=args.lease_name, namespace=args.lease_namespace, identity=args.identity,
        lease_seconds=args.lease_seconds, renew_deadline_seconds=args.renew_deadline_seconds,
        retry_seconds=args.retry_seconds) if args.leader_elect else None
    from .controller import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose)  # log lines with time, logger and level (INFO)
    if not args.verbose:  # not a line per liveness probe
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

    elector = None
    if election is not None:  # a standby waits here, healthy, until it holds the Lease
        from .controller import kube

        kube.identify(f"kubetrain-{election.identity}")  # the children record their creator
        metrics.serve(config.metrics_port)
        elector = leader.become_leader(election, args.liveness)
    else:
        leader.ACTIVE.set(1)
    try:
        asyncio.run(kopf.operator(
            standalone=True,
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
            liveness_endpoint=args.liveness,
        ))
    finally:
        if elector is not None:  # after kopf stopped: a standby takes over at its next retry
            elector.release()
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from .controller.lifecycle import delete_training_jobs
    from .controller.settings import load_config

    namespaces = args.namespace or load_config(args.config).namespaces
    try:
        delete_training_jobs(namespaces, args.timeout)
    except TimeoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .controller.lifecycle import check_installation

    problems = check_installation(args.health, args.metrics, args.namespace, args.timeout)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return EXIT_FAILED if problems else 0


def _cmd_validate(args: argparse.Namespace) -> int:
    for path in args.files:
        load_training_job(path)
        print(f"{path}: valid")
    return 0


def _client(args: argparse.Namespace) -> Any:
    from .client import Client

    return Client(namespace=args.namespace)


def _cmd_submit(args: argparse.Namespace) -> int:
    from .client import describe, job_from
    from .client.display import StatusDisplay
    from .local.display import Display

    err = Console(stderr=True)
    job, _ = job_from(args.file, args.name)  # refused here, before the API server sees it
    client = _client(args)
    created = client.submit(job)
    name = created.metadata.name
    print(f"trainingjob {client.namespace}/{name} created")
    if not args.wait:
        return 0
    show = args.progress if args.progress is not None else err.is_terminal
    feed = StatusDisplay(Display(enabled=show, console=err))
    try:
        for status in client.statuses(name, args.timeout):
            feed.update(status)
    finally:
        feed.display.stop()
    status = client.status(name)
    print(describe(name, status))
    if not Phase(status.phase).terminal:
        print(f"error: still {status.phase} after {args.timeout:.0f}s", file=sys.stderr)
        return EXIT_FAILED
    return 0 if status.phase == Phase.SUCCEEDED else EXIT_FAILED


def _cmd_status(args: argparse.Namespace) -> int:
    from .client import describe

    job = _client(args).get(args.name)
    if args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(job.to_manifest(), sort_keys=False))
    else:
        print(describe(job.metadata.name, job.status or TrainingJobStatus()))
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    for line in _client(args).logs(args.name, unit=args.unit, follow=args.follow):
        print(line, flush=True)
    return 0


def _cmd_get_artifacts(args: argparse.Namespace) -> int:
    folder = _client(args).get_artifacts(args.name, args.directory)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    print(f"{len(files)} files from {args.name} in {folder}")
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    client = _client(args)
    client.delete(args.name)
    print(f"trainingjob {client.namespace}/{args.name} deleted")
    return 0


def _cluster_command(sub: Any, name: str, help: str, func: Any, *,
                     job_name: bool = True) -> argparse.ArgumentParser:
    """A subcommand against the cluster of the kubeconfig, with the user's own rights."""
    command: argparse.ArgumentParser = sub.add_parser(name, help=help)
    if job_name:
        command.add_argument("name", help="the TrainingJob's name")
    command.add_argument("-n", "--namespace", help="default: the kubeconfig context's")
    command.set_defaults(func=func)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetrain", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kubetrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a TrainingJob on this machine (no cluster)")
    run.add_argument("file", type=Path, help="TrainingJob manifest (YAML)")
    run.add_argument("-o", "--output", type=Path, help="write the TrainingJob with its status "
                     "here instead of stdout")
    run.add_argument("--storage", type=Path, help="storage directory (default: spec.storage.path "
                     "or ./kubetrain-runs/<name>)")
    run.add_argument("--resume", action="store_true",
                     help="continue from the checkpoints in storage instead of starting afresh")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="live progress bars (default: when stderr is a terminal)")
    run.set_defaults(func=_cmd_run)

    crd = sub.add_parser("crd", help="print the TrainingJob CustomResourceDefinition")
    crd.set_defaults(func=_cmd_crd)

    op = sub.add_parser("operator", help="run the operator (watches TrainingJobs)")
    op.add_argument("-n", "--namespace", action="append",
                    help="watch this namespace (repeatable); default: the configuration's "
                    "namespaces, else all")
    op.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                    help="liveness endpoint URL (kopf's probe)")
    op.add_argument("--config", type=Path, help="operator configuration (YAML: workerImage, "
                    "imagePullPolicy, defaultPVC, namespaces, prices, metricsPort, "
                    "timerSeconds); default: $KUBETRAIN_CONFIG, else built-in defaults")
    op.add_argument("--verbose", action="store_true", help="debug logging")
    election = op.add_argument_group(
        "leader election", "several replicas: the one holding a Lease (coordination.k8s.io/v1) "
        "runs, the others stand by; env defaults: KUBETRAIN_LEADER_ELECT=true, POD_NAME, "
        "POD_NAMESPACE")
    election.add_argument("--leader-elect", action=argparse.BooleanOptionalAction,
                          default=os.environ.get("KUBETRAIN_LEADER_ELECT", "").lower()
                          in ("1", "true", "yes"),
                          help="take the Lease before acting (default: off)")
    election.add_argument("--lease-name", default=None,
                          help="the Lease's name (default: kubetrain-operator)")
    election.add_argument("--lease-namespace", default=None,
                          help="the Lease's namespace (default: $POD_NAMESPACE, else the pod's "
                          "service account namespace)")
    election.add_argument("--identity", default=None,
                          help="this replica's name in the Lease (default: $POD_NAME, else "
                          "host-pid)")
    election.add_argument("--lease-seconds", type=float, default=10,
                          help="a holder that has not renewed for this long may be replaced")
    election.add_argument("--renew-deadline-seconds", type=float, default=7,
                          help="the holder stops (exit 3) when it could not renew for this long")
    election.add_argument("--retry-seconds", type=float, default=2,
                          help="how often the holder renews and a standby tries")
    op.set_defaults(func=_cmd_operator)

    cleanup = sub.add_parser("cleanup", help="delete every watched TrainingJob and wait until "
                             "they are gone (the Helm chart's pre-delete hook)")
    cleanup.add_argument("-n", "--namespace", action="append",
                         help="namespace (repeatable); default: the configuration's, else all")
    cleanup.add_argument("--config", type=Path, help="operator configuration (for namespaces)")
    cleanup.add_argument("--timeout", type=float, default=120, help="seconds to wait")
    cleanup.set_defaults(func=_cmd_cleanup)

    check = sub.add_parser("check", help="check a running installation (the Helm chart's test)")
    check.add_argument("--health", required=True, help="the operator's liveness URL")
    check.add_argument("--metrics", help="the operator's /metrics URL")
    check.add_argument("--namespace", help="reconcile a suspended TrainingJob here")
    check.add_argument("--timeout", type=float, default=60, help="seconds to wait per step")
    check.set_defaults(func=_cmd_check)

    validate = sub.add_parser("validate", help="check TrainingJob manifests")
    validate.add_argument("files", type=Path, nargs="+")
    validate.set_defaults(func=_cmd_validate)

    submit = _cluster_command(sub, "submit", "validate a TrainingJob, then create it on the "
                              "cluster", _cmd_submit, job_name=False)
    submit.add_argument("file", type=Path, help="TrainingJob manifest (YAML)")
    submit.add_argument("--name", help="metadata.name (default: the manifest's, else generated)")
    submit.add_argument("--wait", action="store_true",
                        help="follow it (live progress as on `run`) until it ends")
    submit.add_argument("--timeout", type=float, default=None, help="seconds --wait waits")
    submit.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="live progress bars (default: when stderr is a terminal)")
    status = _cluster_command(sub, "status", "a TrainingJob's phase, stages, findings and cost",
                              _cmd_status)
    status.add_argument("-o", "--output", choices=["text", "yaml"], default="text")
    logs = _cluster_command(sub, "logs", "a work unit's log (its pod's)", _cmd_logs)
    logs.add_argument("--unit", help="train, augment, trial-3, explain, ... (default: the "
                      "newest pod's unit)")
    logs.add_argument("-f", "--follow", action="store_true", help="stream new lines")
    artifacts = _cluster_command(sub, "get-artifacts", "copy a TrainingJob's files (model, "
                                 "report, plots) here through a short-lived pod",
                                 _cmd_get_artifacts)
    artifacts.add_argument("directory", type=Path)
    _cluster_command(sub, "delete", "delete a TrainingJob (its pods go with it)", _cmd_delete)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ManifestError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except Exception as error:  # the client's errors; its module loads only when used
        from .client import ClientError, InvalidSpec

        if not isinstance(error, ClientError):
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID if isinstance(error, InvalidSpec) else EXIT_FAILED
    except KeyboardInterrupt:  # `logs -f`, `submit --wait`: the job goes on
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
