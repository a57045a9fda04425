"""The study server: ``python -m kubetrain.tuning.serve --storage DIR --port P``.

On Kubernetes this is the study-server pod of a sweep: Optuna's ``run_grpc_proxy_server`` over
the journal file in the job's storage. Trial pods reach it through a Service with
``--study-server HOST:PORT`` (``GrpcStorageProxy``), so only this process writes the journal
and the storage needs no file locking across nodes. Restarted, it replays the journal: the
study survives the server, the operator and every trial.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

import optuna

from ..api import load_training_job
from ..report import Reporter
from .study import create_study_once, journal_path, open_storage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetrain.tuning.serve",
                                     description="kubetrain study server (Optuna gRPC proxy)")
    parser.add_argument("--storage", required=True, type=Path,
                        help="the job's storage directory; the journal is tuning/journal.log")
    parser.add_argument("--port", type=int, default=13000, help="port to listen on")
    parser.add_argument("--host", default="0.0.0.0",
                        help="address to listen on (0.0.0.0: reachable through a Service)")
    parser.add_argument("--job", type=Path, default=None,
                        help="TrainingJob manifest: create its study before serving, so that "
                             "trial pods starting together never race to create it")
    parser.add_argument("--study", default=None, help="study name (default: the job's name)")
    for ignored in ("--base-dir", "--data-root", "--result"):  # given to every unit; unused
        parser.add_argument(ignored, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(args.storage)
    if args.job is not None:
        job = load_training_job(args.job)
        create_study_once(storage, args.study or job.metadata.name, job.spec)
    # Pod deletion sends SIGTERM: leave the wait cleanly (the journal is append-only, so a
    # request cut short leaves at most an unfinished trial, which the sweep's summary fails).
    signal.signal(signal.SIGTERM, _stop)
    Reporter(None).event("serving", host=args.host, port=args.port,
                         journal=str(journal_path(args.storage)))
    try:
        optuna.storages.run_grpc_proxy_server(storage, host=args.host, port=args.port)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
