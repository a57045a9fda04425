"""A PyTorch Lightning callback that reports to kubetrain (custom script mode).

    from kubetrain.integrations.lightning import KubetrainCallback
    trainer = Trainer(max_epochs=int(os.environ["KUBETRAIN_EPOCHS"]),
                      callbacks=[KubetrainCallback()])

After each training epoch (its validation included) it prints one kubetrain epoch line with
the epoch's logged metrics (``self.log("val_loss", ...)``: log ``train_loss`` with
``on_epoch=True``, and ``val_loss``, so the overfitting finding can judge them); after
``trainer.test`` a test line. When kubetrain asks the program to stop (pruning, overfitting with
``action: stop``, a suspend) it sets ``trainer.should_stop``, so Lightning ends the run at the
epoch's end. Works with ``lightning`` and with ``pytorch_lightning``; imports neither torch nor
Lightning beyond what your program already imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import report

try:  # the unified package first, then the standalone one
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - depends on what the image has
    from pytorch_lightning.callbacks import Callback


def _scalars(metrics: Mapping[str, Any], rename: Mapping[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in metrics.items():
        try:
            number = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):
            continue  # not a scalar
        if name.endswith("_step"):
            continue  # a step's value, not the epoch's
        # Lightning names epoch aggregates "<name>_epoch" when logged on step and epoch.
        key = rename.get(name, name).removesuffix("_epoch")
        out[key] = number
    return out


class KubetrainCallback(Callback):
    """Per-epoch metrics and test metrics as kubetrain JSON lines; stops when asked."""

    def __init__(self, rename: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.rename = dict(rename or {})
        """Logged name -> kubetrain name, e.g. {"valid/loss": "val_loss"}."""

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = _scalars(trainer.callback_metrics, self.rename)
        metrics = {k: v for k, v in metrics.items() if not k.startswith("test_")}
        report.epoch(trainer.current_epoch + 1, **metrics)
        if report.should_stop():
            trainer.should_stop = True

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        metrics = _scalars(trainer.callback_metrics, self.rename)
        report.test(**{k: v for k, v in metrics.items() if k.startswith("test_")})
