"""Streaming an image folder larger than memory against the in-memory path.

The training work unit (`python -m kubetrain.workloads.train`, as a pod runs it) on a generated
folder of 64 x 64 RGB PNGs (bench/imagefolder.py), each case a fresh process in its own memory
cgroup (cgroup v1 or v2; root): the cgroup's limit is the unit's memory limit, as a pod's
`resources.limits.memory` is.

- in-memory, fits: 5,000 images (decoded: 246 MB) with `streaming: never`, no limit;
- streamed, same data: the same 5,000 with `streaming: always`, no limit;
- streamed, larger than the limit: 20,000 images (decoded: 983 MB) with `streaming: auto` and
  `training.resources.memory` = the cgroup limit (768 MiB): auto picks streaming;
- in-memory, larger than the limit: the same 20,000 with `streaming: never` under the same
  limit: the kernel kills it;
- shards, larger than the limit: the same 20,000 images as uint8 arrays in 20 `.npz` shards
  (`format: shards`, bench/imagefolder.py's `to_shards`) with `streaming: auto` under the
  same limit: read a shard at a time, no PNG decoding.

Peak memory: the cgroup's own peak (`memory.max_usage_in_bytes` / `memory.peak`: resident
memory of the whole process tree plus the page cache of the files read) and the largest sum of
the tree's resident set sizes, sampled every 0.1 s. samples/s: the unit's own figure (training
samples over the seconds of the training epochs).

    sudo .venv/bin/python bench/streaming.py [--epochs 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
_folders = runpy.run_path(str(HERE / "imagefolder.py"))
generate, to_shards = _folders["generate"], _folders["to_shards"]
MiB = 2**20


class Cgroup:
    """A memory cgroup for one process tree (v2 when mounted so, else v1's memory controller)."""

    def __init__(self, name: str, limit: int | None) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        self.path = Path("/sys/fs/cgroup" if v2 else "/sys/fs/cgroup/memory") / name
        self.v2 = v2
        if self.path.exists():
            self.path.rmdir()
        self.path.mkdir()
        if limit is not None:
            limit_file = "memory.max" if v2 else "memory.limit_in_bytes"
            (self.path / limit_file).write_text(str(limit))
            if not v2 and (self.path / "memory.memsw.limit_in_bytes").exists():
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit))

    def enter(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text())
        except OSError:
            return 0

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def run_case(name: str, images: Path, streaming: str, limit: int | None, epochs: int,
             work: Path, fmt: str = "imagefolder") -> dict[str, Any]:
    memory = f"{limit // MiB}Mi" if limit else "8Gi"
    job = work / f"{name}.yaml"
    job.write_text(yaml.safe_dump({
        "apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"dataset": {"uri": str(images), "format": fmt,
                             "streaming": streaming, "seed": 0},
                 "model": {"builtin": "cnn", "params": {"channels": [16, 32],
                                                        "hiddenUnits": 64}},
                 "training": {"epochs": epochs, "batchSize": 128, "learningRate": 0.003,
                              "resources": {"cpu": "2", "memory": memory}}}}))
    storage = work / name
    group = Cgroup(f"kubetrain-bench-{name}", limit)
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetrain.workloads.train", "--job", str(job), "--storage",
         str(storage)], preexec_fn=group.enter, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    peak_rss = 0

    def sample() -> None:
        nonlocal peak_rss
        while proc.poll() is None:
            peak_rss = max(peak_rss, _tree_rss(proc.pid))
            time.sleep(0.1)
    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate()
    sampler.join()
    seconds = time.time() - started
    result: dict[str, Any] = {}
    result_file = storage / "train" / "result.json"
    if result_file.exists():
        result = json.loads(result_file.read_text())
    row = {
        "case": name, "streaming": streaming,
        "limit_MiB": limit // MiB if limit else None,
        "exit": proc.returncode,
        "killed": proc.returncode in (-9, 137),
        "streamed": result.get("streamed"),
        "samples_per_second": result.get("samples_per_second"),
        "test_accuracy": (result.get("test_metrics") or {}).get("test_accuracy"),
        "peak_tree_rss_MiB": round(peak_rss / MiB),
        "peak_cgroup_MiB": round(group.peak() / MiB),
        "seconds": round(seconds, 1),
    }
    if proc.returncode not in (0, -9, 137):
        row["error"] = err[-500:]
    group.remove()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--limit-mib", type=int, default=768)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "kt-bench")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="run only these cases")
    args = parser.parse_args()
    t0 = time.time()
    small = generate(args.data / f"images-{args.small}", args.small)
    large = generate(args.data / f"images-{args.large}", args.large)
    shards = to_shards(large, args.data / f"shards-{args.large}", per_shard=1000)
    print(f"generated folders in {time.time() - t0:.0f}s; decoded: "
          f"{args.small * 3 * 64 * 64 * 4 / MiB:.0f} MiB and "
          f"{args.large * 3 * 64 * 64 * 4 / MiB:.0f} MiB", flush=True)
    limit = args.limit_mib * MiB
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = [("in-memory-fits", small, "never", None, "imagefolder"),
                 ("streamed-same-data", small, "always", None, "imagefolder"),
                 ("streamed-over-limit", large, "auto", limit, "imagefolder"),
                 ("in-memory-over-limit", large, "never", limit, "imagefolder"),
                 ("shards-over-limit", shards, "auto", limit, "shards")]
        cases = [c for c in cases if not args.only or c[0] in args.only]
        for name, images, streaming, cap, fmt in cases:
            row = run_case(name, images, streaming, cap, args.epochs, work, fmt)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(f"{'case':24} {'images':>7} {'limit':>8} {'streamed':>8} {'samples/s':>10} "
          f"{'peak RSS':>9} {'peak cg':>8} {'result':>8}")
    sizes = {"in-memory-fits": args.small, "streamed-same-data": args.small}
    for row in rows:
        n = sizes.get(row["case"], args.large)
        outcome = "killed" if row["killed"] else ("ok" if row["exit"] == 0 else "failed")
        print(f"{row['case']:24} {n:>7} {row['limit_MiB'] or '-'!s:>8} "
              f"{row['streamed']!s:>8} {row['samples_per_second']!s:>10} "
              f"{row['peak_tree_rss_MiB']:>7}Mi {row['peak_cgroup_MiB']:>6}Mi {outcome:>8}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
