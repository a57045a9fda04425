"""Drive kubetrain from a notebook or a script: submit digits, follow it, read what it found,
fetch its files, delete it. The same cells work on a cluster and on this machine:

    python examples/notebook/digits_client.py --executor local --out /tmp/digits
    python examples/notebook/digits_client.py --namespace ml --out /tmp/digits   # kubeconfig's
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kubetrain import Client
from kubetrain.client import ProgressEvent, describe

# The job as a Python dict (a manifest path or the pydantic spec work too). No metadata.name:
# the client generates one (digits-xxxxx).
SPEC = {
    "dataset": {"builtin": "digits", "validationSplit": 0.15, "testSplit": 0.15, "seed": 0},
    "model": {"builtin": "mlp", "params": {"hiddenUnits": [64]}},
    "training": {"epochs": 6, "batchSize": 64, "learningRate": 0.003,
                 "resources": {"cpu": "500m", "memory": "1Gi"}},
}


def show(event: ProgressEvent) -> None:
    print(f"  [{event.kind}] {event.message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", choices=["kubernetes", "local"], default="kubernetes")
    parser.add_argument("--namespace", help="default: the kubeconfig's")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("digits-artifacts"),
                        help="where the job's files are copied")
    args = parser.parse_args(argv)

    client = Client(args.executor, namespace=args.namespace,
                    storage=args.out.parent / "kubetrain-runs")
    spec = {**SPEC, "training": {**SPEC["training"], "epochs": args.epochs}}
    job = client.submit({"spec": spec})
    name = job.metadata.name
    print(f"submitted {name}", flush=True)

    done = client.wait(name, on_progress=show, timeout=900)
    assert done.status is not None
    print(describe(name, done.status))

    findings = client.status(name).findings
    verdict = findings.overfitting.verdict if findings.overfitting else "-"
    cost = f"{findings.cost.total:.6f} {findings.cost.currency}" if findings.cost else "-"
    print(f"overfitting: {verdict}; cost: {cost}")

    folder = client.get_artifacts(name, args.out)
    print(f"artifacts in {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")
    client.delete(name)
    print(f"deleted {name}")
    return 0 if done.status.phase == "Succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
