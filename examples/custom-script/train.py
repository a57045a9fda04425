"""A plain PyTorch training script that kubetrain runs as its training stage and its trials.

It imports no kubetrain: it reads what it needs from KUBETRAIN_* environment variables and
its arguments, and reports by printing kubetrain's JSON lines. It follows the conventions that
give it the same findings, sweeps, explanations and fault tolerance as the built-in trainer:

- data: ``$KUBETRAIN_DATA_DIR/{train,val,test}.npz`` (arrays X, y: the job's splits);
- progress: one ``{"kubetrain": 1, "event": "epoch", ...}`` line per epoch with train_loss,
  val_loss and the monitored metric; a ``test`` line at the end;
- checkpoints: ``$KUBETRAIN_CHECKPOINT_DIR/last.pt``, written atomically every epoch, read at
  start (a restarted rank or a resumed job continues from it);
- stopping: on SIGTERM (or when ``$KUBETRAIN_STOP_FILE`` exists) finish the epoch, save, exit;
- model: TorchScript in ``$KUBETRAIN_MODEL_DIR/model.ts`` (the explanation stage explains it),
  taking the rows of the .npz files as they are (its input scaling is inside).

Under torchrun (``training.resources.nprocPerNode`` > 1) each rank trains on its share of
every batch with DistributedDataParallel (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

STOP = False


def on_sigterm(signum, frame):
    global STOP
    STOP = True


def emit(event: str, **fields) -> None:
    """One line of kubetrain's reporting protocol (rank 0 only)."""
    if int(os.environ.get("RANK", "0")) == 0:
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                 for k, v in fields.items()}
        print(json.dumps({"kubetrain": 1, "event": event, **clean}), flush=True)


class Net(nn.Module):
    """An MLP on the flattened input with its own input scaling (so the saved model takes the
    raw rows of the .npz files)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, outputs: int, hidden: int,
                 dropout: float) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        width = mean.numel()
        self.layers = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.layers((x - self.mean) / self.std)


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(Path(os.environ["KUBETRAIN_DATA_DIR"]) / f"{split}.npz")
    return torch.from_numpy(data["X"]).float(), torch.from_numpy(data["y"]).long()


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """Mean loss, its standard error (from the per-example losses) and accuracy."""
    model.eval()
    with torch.no_grad():
        logits = model(X)
        losses = nn.functional.cross_entropy(logits, y, reduction="none")
        accuracy = (logits.argmax(1) == y).float().mean().item()
    model.train()
    se = losses.std().item() / math.sqrt(len(losses)) if len(losses) > 1 else 0.0
    return losses.mean().item(), se, accuracy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("KUBETRAIN_EPOCHS",
                                                                         "20")))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patience", type=int, default=5)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    stop_file = Path(os.environ.get("KUBETRAIN_STOP_FILE", "/nonexistent"))

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    torch.manual_seed(int(os.environ.get("KUBETRAIN_SEED", "0")))

    X_train, y_train = load("train")
    X_val, y_val = load("val")
    X_test, y_test = load("test")
    flat = X_train.flatten(1)
    classes = int(max(y_train.max(), y_val.max())) + 1
    model = Net(flat.mean(0), flat.std(0).clamp_min(1e-3), classes, args.hidden, args.dropout)
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                  weight_decay=args.weight_decay)

    checkpoint_dir = Path(os.environ.get("KUBETRAIN_CHECKPOINT_DIR", "checkpoints"))
    last = checkpoint_dir / "last.pt"
    start, best = 1, {"epoch": 0, "val_loss": math.inf, "state": None}
    if last.exists():  # resume: a restarted rank, a resumed job
        saved = torch.load(last, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start, best = saved["epoch"] + 1, saved["best"]

    generator = torch.Generator().manual_seed(int(os.environ.get("KUBETRAIN_SEED", "0")))
    per_rank = max(1, args.batch_size // world)
    epoch = start - 1
    for epoch in range(start, args.epochs + 1):
        began = time.time()
        order = torch.randperm(len(y_train), generator=generator)
        # Full batches only: every rank takes the same number of steps (DDP needs it).
        for i in range(0, len(order) - args.batch_size + 1, args.batch_size):
            batch = order[i:i + args.batch_size][rank * per_rank:(rank + 1) * per_rank]
            loss = nn.functional.cross_entropy(ddp(X_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        train_loss, _, train_accuracy = evaluate(model, X_train, y_train)
        val_loss, val_se, val_accuracy = evaluate(model, X_val, y_val)
        if val_loss < best["val_loss"]:
            best = {"epoch": epoch, "val_loss": val_loss,
                    "state": {k: v.clone() for k, v in model.state_dict().items()}}
        emit("epoch", epoch=epoch, train_loss=train_loss, val_loss=val_loss,
             val_loss_se=val_se, train_accuracy=train_accuracy, val_accuracy=val_accuracy,
             seconds=round(time.time() - began, 4))
        if rank == 0:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint_dir / ".last.pt.tmp"
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "epoch": epoch, "best": best}, tmp)
            os.replace(tmp, last)  # atomic: a kill never leaves half a checkpoint
        if STOP or stop_file.exists() or epoch - best["epoch"] >= args.patience:
            break

    if rank == 0 and best["state"] is not None:
        model.load_state_dict(best["state"])  # deliver the best epoch's weights
        test_loss, _, test_accuracy = evaluate(model, X_test, y_test)
        emit("test", test_loss=test_loss, test_accuracy=test_accuracy)
        model_dir = Path(os.environ.get("KUBETRAIN_MODEL_DIR", "."))
        model_dir.mkdir(parents=True, exist_ok=True)
        torch.jit.save(torch.jit.script(model.eval()), model_dir / ".model.ts.tmp")
        os.replace(model_dir / ".model.ts.tmp", model_dir / "model.ts")
        emit("model", path=str(model_dir / "model.ts"), epoch=best["epoch"])
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
