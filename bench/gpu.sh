#!/usr/bin/env bash
# gpu.sh — the one thing to run on a GPU machine (issue 11): bench/gpu.py's table, every row
# beside its baseline from the same run, in under 8 minutes on one GPU.
#
#   make install && bash bench/gpu.sh          # from the repository root; args go to gpu.py
#   bash bench/gpu.sh --cpu                     # the CPU mode (small; what CI's smoke test runs)
#
# It uses .venv (make install) when there is one, else python3 with kubetrain importable, and
# says what it found before it starts: the torch build (a CPU-only torch on a GPU machine runs
# the CPU mode; install the CUDA build the worker image pins, e.g.
# `.venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128`),
# the GPU, and whether NVML (nvidia-ml-py) is there for the utilisation rows.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$REPO/operator${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PYEOF'
import importlib.util
import sys

import torch

cuda = torch.cuda.is_available()
print(f"gpu.sh: python {sys.version.split()[0]}, torch {torch.__version__} "
      f"(CUDA build: {torch.version.cuda or 'no'}), "
      f"GPU: {torch.cuda.get_device_name(0) if cuda else 'none visible'}", flush=True)
if not cuda:
    print("gpu.sh: no CUDA device visible to torch: running the CPU mode "
          "(on a GPU machine, install torch's CUDA build: see the top of bench/gpu.sh)",
          flush=True)
if importlib.util.find_spec("pynvml") is None:
    print("gpu.sh: nvidia-ml-py is not installed: units measure no GPU utilisation and the "
          "findings rows cannot flag the starved run (pip install nvidia-ml-py)", flush=True)
PYEOF
exec "$PY" bench/gpu.py "$@"
