"""Kubernetes resource quantities (``500m``, ``2``, ``4Gi``) as numbers."""

from __future__ import annotations

import re

CPU_PATTERN = r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$"
MEMORY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_cpu(value: str) -> float:
    """Cores in a CPU quantity: ``"500m"`` → 0.5, ``"2"`` → 2.0."""
    if not re.match(CPU_PATTERN, value):
        raise ValueError(f"{value!r} is not a CPU quantity (examples: 500m, 1, 2.5)")
    if value.endswith("m"):
        return int(value[:-1]) / 1000
    return float(value)


def parse_memory_gib(value: str) -> float:
    """GiB in a memory quantity: ``"512Mi"`` → 0.5, ``"2G"`` → 1.86."""
    match = re.match(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)$", value)
    if not match or not re.match(MEMORY_PATTERN, value):
        raise ValueError(f"{value!r} is not a memory quantity (examples: 512Mi, 4Gi, 8G)")
    number, suffix = float(match.group(1)), match.group(2)
    factor = _BINARY.get(suffix) or _DECIMAL.get(suffix) or 1
    return number * factor / 2**30
