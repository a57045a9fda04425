"""The built-in training loop: DDP, autocast, schedules, early stopping, checkpoints, resume.

Each epoch every rank takes its slice of one seeded permutation of a split (batches.py: whole
tensors on the device, or rows streamed from disk for data larger than memory).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..api.metrics import is_maximized, monitored_metric
from ..api.spec import TrainingJobSpec
from ..augment.mix import BatchMixer, batch_mixer
from ..findings.overfitting import should_stop_for_overfitting
from ..report import Reporter
from . import checkpoint as ckpt
from .acceleration import (
    Acceleration,
    CompiledForward,
    DeviceCaps,
    check_batch_split,
    choose_acceleration,
)
from .batches import Split, StreamingSplit
from .distributed import DistContext, all_reduce_sum

OVERFITTING_STOP = "overfitting detected (findings.overfitting.action: stop)"
EpochCallback = Callable[[dict[str, float]], bool]
"""Called on rank 0 after each epoch with its metrics; returning True stops training (pruning)."""
EpochObserver = Callable[[dict[str, float]], None]
"""Called on rank 0 after every epoch with its metrics, whatever stops training (tracking)."""


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int | None
    best_metrics: dict[str, float]
    stopped_early: bool
    stop_reason: str | None
    resumed_from_epoch: int | None
    restored_best: bool
    samples_per_second: float
    train_seconds: float
    epoch_seconds: list[float] = field(default_factory=list)
    compile_seconds: float | None = None
    """With training.compile: the steps that compiled (compile time plus one step each)."""


def improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    """Whether value beats best by a relative margin (relative so one setting fits any scale)."""
    if best is None or not math.isfinite(best):
        return math.isfinite(value)
    margin = abs(best) * min_delta
    return value < best - margin if mode == "min" else value > best + margin


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The learning-rate multiplier at an optimizer step (pure, so resuming needs only the step)."""
    progress = min(step / max(total_steps, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        return 0.1 ** int(progress * 3)  # x0.1 at one third and two thirds of training
    if schedule == "onecycle":
        warm = 0.3
        if progress < warm:
            return 0.1 + 0.9 * progress / warm
        return 0.5 * (1 + math.cos(math.pi * (progress - warm) / (1 - warm)))
    return 1.0


class _StopSignal:
    """SIGTERM (pod deletion, Ctrl-C from the executor) ends the run after the current epoch."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _StopSignal:
        # Ray Tune runs trials off the main thread, where handlers cannot be set; there the
        # trial runner's own stop mechanism applies.
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)


class Trainer:
    def __init__(
        self,
        spec: TrainingJobSpec,
        model: nn.Module,
        task: str,
        train: Split,
        val: Split,
        ctx: DistContext,
        reporter: Reporter,
        checkpoint_dir: Path,
        epochs: int | None = None,
        on_epoch: EpochCallback | None = None,
        target_scale: float = 1.0,
        observe: EpochObserver | None = None,
    ) -> None:
        self.observe = observe
        self.target_scale = target_scale
        self.spec = spec
        self.cfg = spec.training
        self.task = task
        self.ctx = ctx
        self.reporter = reporter
        self.checkpoint_dir = checkpoint_dir
        self.epochs = epochs or self.cfg.epochs
        self.on_epoch = on_epoch
        self.train = train
        self.val = val
        self.model = model.to(ctx.device)
        self.use_cuda = ctx.device.type == "cuda"
        self.accel: Acceleration = choose_acceleration(
            DeviceCaps.of(ctx.device), self.cfg.precision, self.cfg.compile,
            image_input=train.ndim == 4, streamed=isinstance(train, StreamingSplit),
            world_size=ctx.world_size)
        check_batch_split(self.cfg.batch_size, ctx.world_size)
        if self.accel.sync_batchnorm and self._has_batchnorm():
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if self.accel.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.ddp: nn.Module = (
            DistributedDataParallel(
                self.model, device_ids=[ctx.local_rank] if self.use_cuda else None)
            if ctx.distributed else self.model
        )
        self.compiled: CompiledForward | None = (
            CompiledForward(self.ddp, self.accel.compile, ctx.device)
            if self.accel.compile != "none" else None)
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.compiled or self.ddp
        self.criterion: nn.Module = (
            nn.CrossEntropyLoss(label_smoothing=self.cfg.label_smoothing)
            if task == "classification" else nn.MSELoss()
        )
        # The same loss per example, for the steps whose share of the global batch is uneven.
        self.per_example: nn.Module = (
            nn.CrossEntropyLoss(label_smoothing=self.cfg.label_smoothing, reduction="none")
            if task == "classification" else nn.MSELoss(reduction="none")
        )
        image_aug = spec.augmentation.image
        # mixup / CutMix at training time; None (the plain loss below) when they are off.
        self.mixer: BatchMixer | None = batch_mixer(
            image_aug.mixup, image_aug.cutmix, task, train.ndim, spec.dataset.seed,
        ) if spec.augmentation.enabled and image_aug is not None else None
        self.optimizer = self._make_optimizer()
        self.local_batch = max(1, self.cfg.batch_size // ctx.world_size)
        self.per_rank = math.ceil(len(train) / ctx.world_size)
        # Rows of this rank's share that are real; the rest (at most one) pads ranks to equal
        # length and weighs nothing (see _loss).
        self.real_rows = (len(train) - ctx.rank + ctx.world_size - 1) // ctx.world_size
        self.steps_per_epoch = math.ceil(self.per_rank / self.local_batch)
        self.step = 0
        self.amp_dtype = self.accel.autocast_dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_cuda
                                           and self.accel.precision == "fp16")
        self.monitor = monitored_metric(spec)
        self.mode = "max" if is_maximized(self.monitor) else "min"

    def _make_optimizer(self) -> torch.optim.Optimizer:
        # Decay weights, not biases and norms: the usual practice, and what users expect of
        # "weight decay".
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for param in self.model.parameters():
            (decay if param.dim() > 1 else no_decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if self.cfg.weight_decay == 0:
            # Without decay the split changes nothing but costs a second group in every step
            # (about 5% of the step of a small MLP on the CPU): one group, the same updates.
            groups = [{"params": decay + no_decay, "weight_decay": 0.0}]
        # fused: one kernel for the whole update on a GPU (None keeps torch's CPU default).
        fused = True if self.accel.fused_optimizer else None
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.cfg.learning_rate,
                                   momentum=self.cfg.momentum, nesterov=self.cfg.momentum > 0,
                                   fused=fused)
        return torch.optim.AdamW(groups, lr=self.cfg.learning_rate, fused=fused)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.use_cuda and self.amp_dtype is not None:
            return torch.autocast("cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _set_lr(self) -> None:
        factor = lr_factor(self.cfg.schedule, self.step, self.steps_per_epoch * self.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.learning_rate * factor

    def _epoch_indices(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.spec.dataset.seed * 100003 + epoch)
        perm = torch.randperm(len(self.train), generator=generator)
        # Every rank needs the same number of steps (DDP all-reduces each one): pad by wrapping.
        total = self.per_rank * self.ctx.world_size
        if total > len(perm):
            perm = torch.cat([perm, perm[: total - len(perm)]])
        return perm[self.ctx.rank :: self.ctx.world_size].to(self.ctx.device)

    def _step_weights(self, step: int, size: int) -> tuple[int, int]:
        """(real rows in this rank's batch, real rows in the global batch) of an epoch's step.

        Global step k is the permutation's rows [kB, (k+1)B) (B the spec's batch), rank r
        taking every world_size-th of them; the last step may be short and unevenly shared,
        and the padding rows at the end of a rank's share are not real. Streamed rows come in
        each rank's read order, so there every row counts as real (their batches differ from
        one process's anyway).
        """
        world = self.ctx.world_size
        if world == 1 or isinstance(self.train, StreamingSplit):
            return size, size * world
        real = min(max(self.real_rows - step * self.local_batch, 0), size)
        step_rows = self.local_batch * world
        return real, min(len(self.train) - step * step_rows, step_rows)

    def _loss(self, xb: torch.Tensor, yb: torch.Tensor, real: int,
              step_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to back-propagate, the sum of the real rows' losses).

        DDP averages the ranks' gradients: for a step that every rank shares evenly, the mean
        loss over the rank's batch gives the mean over the global batch. Otherwise each rank
        back-propagates its real rows' loss sum times world_size / (real rows of the step), so
        the average is again the global batch's mean loss, as one process computes it.
        """
        with self._autocast():
            if real == len(yb) and step_rows == real * self.ctx.world_size:
                if self.mixer is None:
                    loss = self.criterion(self.forward(xb), yb)
                else:
                    loss = self.mixer.loss(self.criterion, self.forward, xb, yb)
                return loss, loss.detach().float() * len(yb)
            if self.mixer is None:
                losses = self.per_example(self.forward(xb), yb)
            else:
                losses = self.mixer.loss(self.per_example, self.forward, xb, yb)
            real_sum = losses.float().reshape(len(yb), -1).mean(1)[:real].sum()
            return real_sum * (self.ctx.world_size / step_rows), real_sum.detach()

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over this rank's shard; returns (mean train loss over all ranks, seconds)."""
        self.ddp.train()
        indices = self._epoch_indices(epoch)
        if self.mixer is not None:
            self.mixer.start_epoch(epoch, self.ctx.rank)
        loss_sum = torch.zeros((), device=self.ctx.device)
        real_rows = 0
        start = time.perf_counter()
        for step, (xb, yb) in enumerate(self.train.batches(indices, self.local_batch)):
            if self.task == "classification" and len(yb) == 1 and self._has_batchnorm():
                continue  # BatchNorm cannot train on one example
            self._set_lr()
            if self.compiled is not None:
                self.compiled.begin_step(xb)
            real, step_rows = self._step_weights(step, len(yb))
            loss, batch_sum = self._loss(xb, yb, real, step_rows)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss_sum += batch_sum
            real_rows += real
            if self.compiled is not None:
                self.compiled.end_step()
            self.step += 1
        totals = torch.stack([loss_sum, torch.tensor(float(real_rows), device=self.ctx.device)])
        all_reduce_sum(totals, self.ctx)
        if self.use_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return float(totals[0] / totals[1]), seconds

    def _has_batchnorm(self) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())

    @torch.no_grad()
    def evaluate(self, split: Split, prefix: str) -> dict[str, float]:
        """Loss and accuracy (or RMSE) over the split, each rank a slice, summed across ranks."""
        self.model.eval()
        rows = torch.arange(self.ctx.rank, len(split), self.ctx.world_size)
        loss_sum = torch.zeros((), device=self.ctx.device)
        loss_sq = torch.zeros((), device=self.ctx.device)
        extra = torch.zeros((), device=self.ctx.device)
        batch = max(self.local_batch, 1024)
        per_example = nn.CrossEntropyLoss(reduction="none") if self.task == "classification" \
            else nn.MSELoss(reduction="none")
        for xb, yb in split.batches(rows, batch):
            with self._autocast():
                out = self.model(xb).float()
            losses = per_example(out, yb).reshape(-1)
            loss_sum += losses.sum()
            loss_sq += (losses * losses).sum()
            if self.task == "classification":
                extra += (out.argmax(1) == yb).sum()
        totals = torch.stack([loss_sum, loss_sq, extra,
                              torch.tensor(float(len(rows)), device=self.ctx.device)])
        all_reduce_sum(totals, self.ctx)
        n = max(float(totals[3]), 1.0)
        mean = float(totals[0]) / n
        # The standard error of the mean loss: the findings' noise floor for the gap rule.
        variance = max(float(totals[1]) / n - mean * mean, 0.0)
        metrics = {f"{prefix}_loss": mean, f"{prefix}_loss_se": math.sqrt(variance / n)}
        if self.task == "classification":
            metrics[f"{prefix}_accuracy"] = float(totals[2]) / n
        else:
            # Targets are standardized for training; RMSE is reported in the target's units.
            metrics[f"{prefix}_rmse"] = math.sqrt(float(totals[0]) / n) * self.target_scale
        return metrics

    # ----- checkpoints -------------------------------------------------------------------

    def _state(self, epoch: int, history: list[dict[str, float]],
               es: dict[str, Any]) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": history,
            "early_stopping": es,
        }

    def _save(self, epoch: int, history: list[dict[str, float]], es: dict[str, Any]) -> None:
        if self.ctx.is_main:
            ckpt.save_atomic(self._state(epoch, history, es), self.checkpoint_dir / ckpt.LATEST)
            self.reporter.event("checkpoint", epoch=epoch,
                                path=str(self.checkpoint_dir / ckpt.LATEST))

    def _save_best(self) -> None:
        if self.ctx.is_main:
            ckpt.save_atomic(self.model.state_dict(), self.checkpoint_dir / ckpt.BEST)

    # ----- the loop ----------------------------------------------------------------------

    def fit(self) -> FitResult:
        history: list[dict[str, float]] = []
        es: dict[str, Any] = {"best": None, "best_epoch": None, "bad_epochs": 0}
        start_epoch = 1
        resumed_from = None
        state = ckpt.load_latest(self.checkpoint_dir)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.step = state["step"]
            history = state["history"]
            es = state["early_stopping"]
            resumed_from = int(state["epoch"])
            start_epoch = resumed_from + 1
            self.reporter.event("resumed", epoch=resumed_from)

        stopped_early, stop_reason = False, None
        train_samples, train_seconds = 0, 0.0
        epoch = start_epoch - 1
        with _StopSignal() as stop_signal:
            for epoch in range(start_epoch, self.epochs + 1):
                epoch_start = time.perf_counter()
                train_loss, seconds = self.train_epoch(epoch)
                train_samples += self.per_rank * self.ctx.world_size
                train_seconds += seconds
                metrics: dict[str, float] = {"epoch": epoch, "train_loss": train_loss}
                metrics.update(self.evaluate(self.val, "val"))
                metrics["lr"] = self.optimizer.param_groups[0]["lr"]
                metrics["samples_per_second"] = self.per_rank * self.ctx.world_size / seconds
                metrics["seconds"] = time.perf_counter() - epoch_start
                history.append(metrics)
                if self.observe is not None and self.ctx.is_main:
                    self.observe(dict(metrics))

                value = metrics[self.monitor]
                es_cfg = self.cfg.early_stopping
                min_delta = es_cfg.min_delta if es_cfg else 0.0
                if improved(value, es["best"], self.mode, min_delta):
                    es.update(best=value, best_epoch=epoch, bad_epochs=0)
                    self._save_best()
                else:
                    es["bad_epochs"] += 1
                self.reporter.event("epoch", epochs=self.epochs, best_epoch=es["best_epoch"],
                                    **metrics)

                reason = None
                if not math.isfinite(train_loss):
                    reason = "non-finite training loss"
                elif es_cfg and es_cfg.enabled and es["bad_epochs"] >= es_cfg.patience:
                    reason = (f"early stopping: {self.monitor} did not improve for "
                              f"{es_cfg.patience} epochs")
                elif should_stop_for_overfitting(history, self.spec):
                    reason = OVERFITTING_STOP
                elif self.on_epoch is not None and self.ctx.is_main and self.on_epoch(metrics):
                    reason = "pruned"
                # Every rank must take the same decision, or the next all-reduce hangs.
                flags = torch.tensor([float(reason is not None), float(stop_signal.requested)],
                                     device=self.ctx.device)
                all_reduce_sum(flags, self.ctx)
                if flags[1] > 0 and reason is None:
                    reason = "terminated by signal"
                stopping = flags.sum() > 0
                last = epoch == self.epochs or stopping
                if epoch % self.cfg.checkpoint.every_epochs == 0 or last:
                    self._save(epoch, history, es)
                if stopping:
                    stopped_early, stop_reason = True, reason or "stopped by another rank"
                    self.reporter.event("stopped", epoch=epoch, reason=stop_reason)
                    break

        es_cfg = self.cfg.early_stopping
        restore = bool(es_cfg and es_cfg.enabled and es_cfg.restore_best) or (
            stop_reason == OVERFITTING_STOP)
        best_epoch = es["best_epoch"]
        restored = False
        if restore and best_epoch is not None and best_epoch != epoch:
            best = ckpt.load_best(self.checkpoint_dir)
            if best is not None:
                self.model.load_state_dict(best)
                restored = True
        best_metrics = next((h for h in history if h["epoch"] == best_epoch), {})
        return FitResult(
            history=history,
            best_epoch=best_epoch,
            best_metrics={k: v for k, v in best_metrics.items()
                          if k.startswith(("val_", "train_"))},
            stopped_early=stopped_early,
            stop_reason=stop_reason,
            resumed_from_epoch=resumed_from,
            restored_best=restored,
            samples_per_second=train_samples / train_seconds if train_seconds else 0.0,
            train_seconds=train_seconds,
            epoch_seconds=[h["seconds"] for h in history],
            compile_seconds=self.compiled.seconds if self.compiled is not None else None,
        )
