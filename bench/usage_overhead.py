"""What measuring a unit costs: training steps with the usage sampler running against without.

The built-in CNN on digits-sized images (batch 256, 1 thread), in one process: blocks of
``--steps`` optimizer steps alternate between "sampler off" (the baseline) and "sampler on"
(``kubetrain.usage.UsageSampler`` at its default 2 samples/s, on a process tree like a
streaming unit's: the trainer and two idle DataLoader-like children), ``--rounds`` times; the
figure is the median step time of each, and their ratio. Also the sampler's own cost: the
seconds one sample takes, times the samples per second (its share of one core).

    python bench/usage_overhead.py [--rounds 6] [--steps 150] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def _step_times(model: torch.nn.Module, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(256, 1, 8, 8), torch.randint(0, 10, (256,))
    started = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - started) / steps


def main(argv: list[str] | None = None) -> dict[str, float]:
    from kubetrain.api.spec import ModelSpec
    from kubetrain.models import build_model
    from kubetrain.usage import INTERVAL_SECONDS, UsageSampler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelSpec(builtin="cnn"), (1, 8, 8), 10, 0.0)
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
                for _ in range(2)]
    try:
        _step_times(model, 20)  # warm-up
        off, on = [], []
        for _ in range(args.rounds):
            off.append(_step_times(model, args.steps))
            sampler = UsageSampler().start()
            on.append(_step_times(model, args.steps))
            sampler.stop()
        probe = UsageSampler()
        probe.start()
        probe.stop()
        started = time.perf_counter()
        for _ in range(20):
            probe._sample(1.0, 1.0)
        per_sample = (time.perf_counter() - started) / 20
    finally:
        for child in children:
            child.kill()
    row = {"step_ms_off": round(statistics.median(off) * 1000, 3),
           "step_ms_on": round(statistics.median(on) * 1000, 3),
           "sample_ms": round(per_sample * 1000, 3),
           "sampler_core_share": round(per_sample / INTERVAL_SECONDS, 5)}
    row["overhead"] = round(row["step_ms_on"] / row["step_ms_off"] - 1, 4)
    print(json.dumps(row))
    print(f"median step: {row['step_ms_off']} ms without the sampler, {row['step_ms_on']} ms "
          f"with it ({row['overhead']:+.2%}); one sample {row['sample_ms']} ms, "
          f"{row['sampler_core_share']:.3%} of a core at {1 / INTERVAL_SECONDS:g} samples/s")
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))
    return row


if __name__ == "__main__":
    main()
