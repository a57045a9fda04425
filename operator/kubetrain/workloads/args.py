"""The command-line arguments every work unit takes, in a pod and as a local process."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_common_arguments(parser: argparse.ArgumentParser,
                         result_default: str = "<storage>/<unit>/result.json",
                         storage_help: str = "the job's storage directory (shared by all "
                                             "work units)") -> None:
    """--job, --storage, --result, --base-dir and --data-root, the same for every unit."""
    parser.add_argument("--job", required=True, type=Path, help="TrainingJob manifest (YAML)")
    parser.add_argument("--storage", required=True, type=Path, help=storage_help)
    parser.add_argument("--result", type=Path, default=None,
                        help="result file (default: /dev/termination-log in a pod, else "
                             f"{result_default})")
    parser.add_argument("--base-dir", type=Path, default=Path.cwd(),
                        help="folder that relative dataset URIs are resolved against")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="where pvc://claim/path dataset URIs are mounted")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder training.command runs in (default: the current one; the "
                             "local executor passes the manifest's folder)")
    parser.add_argument("--program-dir", type=Path, default=None,
                        help="training.command runs in another container of this pod (an image "
                             "without kubetrain); talk to it through this shared folder")


def add_remediation_argument(parser: argparse.ArgumentParser) -> None:
    """--remediation: the spec changes of an overfitting remediation attempt (the engine's)."""
    parser.add_argument("--remediation", default=None,
                        help="spec changes of a remediation attempt, as JSON "
                             "([{field, before, after}, ...])")
