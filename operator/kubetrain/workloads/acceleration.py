"""What the built-in trainer does to run fast on its device: a pure decision from the device's
capabilities and the spec, and the few torch calls that carry it out.

The decision never touches what the spec fixes (batch size, learning rate, optimizer, schedule):
it picks only how the same mathematics is computed. ``precision: auto`` (the default) trains in
bf16 autocast on a GPU that supports it and in fp32 everywhere else (the CPU, older GPUs).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

Precision = Literal["fp32", "bf16", "fp16"]
CompileMode = Literal["none", "default", "reduce-overhead"]


class AccelerationError(ValueError):
    """The spec asks for what this unit's device (or its processes) cannot do; the message
    names the field."""


@dataclass(frozen=True)
class DeviceCaps:
    """What the decision needs to know about the unit's device."""

    kind: Literal["cpu", "cuda"]
    bf16: bool = False
    """The GPU computes in bfloat16 (Ampere and later)."""
    name: str = "cpu"
    c_compiler: bool = True
    """A C/C++ compiler on PATH: torch.compile builds inductor's CPU code and Triton's GPU
    launcher with it."""

    @classmethod
    def of(cls, device: torch.device) -> DeviceCaps:
        compiler = has_c_compiler()
        if device.type != "cuda":
            return cls("cpu", c_compiler=compiler)
        return cls("cuda", bf16=torch.cuda.is_bf16_supported(),
                   name=torch.cuda.get_device_name(device), c_compiler=compiler)


def has_c_compiler() -> bool:
    names = [os.environ.get("CC", ""), os.environ.get("CXX", ""), "cc", "gcc", "g++", "clang",
             "clang++"]
    return any(shutil.which(name) for name in names if name)


@dataclass(frozen=True)
class Acceleration:
    """How the trainer computes: reported in the training unit's result and the job's status."""

    precision: Precision
    """The autocast precision actually used (``auto`` resolved)."""
    channels_last: bool
    """Convolutional model and images in NHWC memory layout (tensor cores' layout)."""
    fused_optimizer: bool
    """The optimizer's fused kernel: one launch per step instead of one per parameter."""
    compile: CompileMode
    """torch.compile mode of the training forward (``reduce-overhead``: CUDA graphs)."""
    data_on_device: bool
    """In-memory rows live on the device and batches are index lookups there; streamed rows
    come through pinned memory with non-blocking copies on a GPU."""
    sync_batchnorm: bool = False
    """DDP on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm), as one process
    computes them. torch cannot synchronize them on the CPU: there each rank normalizes its
    own share of the batch."""

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def report(self) -> dict[str, Any]:
        return asdict(self)


def choose_acceleration(caps: DeviceCaps, precision: str, compile_mode: str,
                        image_input: bool, streamed: bool, world_size: int = 1) -> Acceleration:
    """The careful engineer's choices for this device and spec (pure; raises
    ``AccelerationError`` naming the spec field when the device cannot do what it asks)."""
    cuda = caps.kind == "cuda"
    if precision == "auto":
        chosen: Precision = "bf16" if cuda and caps.bf16 else "fp32"
    elif precision == "bf16" and not (cuda and caps.bf16):
        where = f"this unit's GPU ({caps.name})" if cuda else "the CPU"
        raise AccelerationError(
            f"spec.training.precision: bf16 needs a GPU that computes in bfloat16 and {where} "
            "does not; use auto (bf16 where it can, fp32 elsewhere), fp16 or fp32")
    elif precision == "fp16" and not cuda:
        raise AccelerationError("spec.training.precision: fp16 needs a GPU; use auto or fp32 "
                                "on the CPU")
    elif precision in ("fp32", "bf16", "fp16"):
        chosen = precision  # type: ignore[assignment]
    else:
        raise AccelerationError(f"spec.training.precision: {precision!r} is not one of auto, "
                                "fp32, bf16, fp16")
    if compile_mode == "reduce-overhead" and not cuda:
        raise AccelerationError("spec.training.compile: reduce-overhead captures CUDA graphs "
                                "and needs a GPU; use default or none on the CPU")
    if compile_mode not in ("none", "default", "reduce-overhead"):
        raise AccelerationError(f"spec.training.compile: {compile_mode!r} is not one of none, "
                                "default, reduce-overhead")
    if compile_mode != "none" and not caps.c_compiler:
        raise AccelerationError(
            f"spec.training.compile: {compile_mode} needs a C compiler (cc, gcc or clang) in the "
            "unit's image for torch.compile, and this one has none; use compile: none, or an "
            "image with gcc (training.image)")
    return Acceleration(precision=chosen, channels_last=cuda and image_input,
                        fused_optimizer=cuda, compile=compile_mode,  # type: ignore[arg-type]
                        data_on_device=not streamed,
                        sync_batchnorm=cuda and world_size > 1)


def check_batch_split(batch_size: int, world_size: int) -> None:
    """The spec's batch is the global one: every DDP process takes an equal share of it, so
    it must divide evenly (a silently smaller batch would change the training)."""
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        near = " or ".join(str(n) for n in (lower, lower + world_size) if n)
        raise AccelerationError(
            f"spec.training.batchSize: {batch_size} does not split evenly over the "
            f"{world_size} training processes (nodes x nprocPerNode); use a multiple of "
            f"{world_size}, e.g. {near}")


class CompiledForward:
    """The training forward through ``torch.compile``, with the time spent compiling measured.

    torch.compile compiles on the first call with each new input shape (static shapes: the
    full batch, then the smaller last one) and the backward on its first run, so the whole
    first step of each shape is timed (synchronized on a GPU): the compile time plus one step,
    an upper bound that the reported figure says it is.
    """

    def __init__(self, module: nn.Module, mode: CompileMode, device: torch.device) -> None:
        self.module = module
        self.mode = mode
        self.device = device
        self.compiled: Callable[..., torch.Tensor] = torch.compile(
            module, mode=None if mode == "default" else mode, dynamic=False)
        self.seen: set[tuple[int, ...]] = set()
        self.seconds = 0.0
        self._started: float | None = None

    def begin_step(self, xb: torch.Tensor) -> None:
        """Before a step: mark a CUDA-graph step and start the clock on a shape not seen yet."""
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        shape = tuple(xb.shape)
        if shape not in self.seen:
            self.seen.add(shape)
            self._sync()
            self._started = time.perf_counter()

    def end_step(self) -> None:
        if self._started is not None:
            self._sync()
            self.seconds += time.perf_counter() - self._started
            self._started = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        return self.compiled(xb)
