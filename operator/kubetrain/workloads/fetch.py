"""The data stage: ``python -m kubetrain.workloads.fetch`` copies an s3:// or https:// dataset
into the job's storage once per version (``kubetrain.data.remote``), and checks that it loads.

Exit 0 with ``fetched: false`` when this version was there already; exit 1 with
``unavailable`` (the job fails with reason DataUnavailable, nothing retried) when the data
cannot be had; exit 2 when it was had but the spec does not fit it (a missing target column).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..api import load_training_job
from ..data import DatasetError, load_dataset
from ..data.remote import DataUnavailable, fetch
from ..report import Reporter, default_result_path, refuse
from .args import add_common_arguments

UNIT = "fetch"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetrain.workloads.fetch",
                                     description="kubetrain data stage: fetch dataset.uri")
    add_common_arguments(parser)
    return parser.parse_args(argv)


def result_path(args: argparse.Namespace) -> Path:
    return args.result or default_result_path() or args.storage / UNIT / "result.json"


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    args = parse_args(argv)
    spec = load_training_job(args.job).spec
    reporter = Reporter(result_path(args))
    reporter.event("start", unit=UNIT, uri=spec.dataset.uri)
    try:
        copy = fetch(spec.dataset, args.storage)
    except DataUnavailable as error:
        message = f"spec.{error}"
        print(f"error: {message}", file=sys.stderr)
        reporter.result({"unit": UNIT, "status": "failed", "unavailable": message,
                         "message": message[:500]})
        return 1
    print(f"{'fetched' if copy.fetched else 'already in storage, nothing fetched:'} "
          f"{copy.uri} version {copy.version}: {copy.files} object(s), {copy.bytes} bytes "
          f"in {copy.seconds:.1f}s -> {copy.path}", flush=True)
    try:
        dataset = load_dataset(spec.dataset, base_dir=args.base_dir, storage=args.storage)
    except DatasetError as error:
        return refuse(result_path(args), [f"spec.{error}"])
    reporter.result({"unit": UNIT, "status": "succeeded", **asdict(copy), "rows": len(dataset),
                     "seconds": round(time.time() - started, 3)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
