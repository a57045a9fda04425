"""`kubetrain submit --wait`: the same live bars and trial table as `kubetrain run`, fed from
the statuses a watch brings instead of the work units' own lines."""

from __future__ import annotations

from ..api.status import StagePhase, TrainingJobStatus
from ..local.display import Display
from ..pipeline.plan import REPORT_UNIT, STUDY_UNIT, TrialSweep

# Housekeeping units `kubetrain run` shows no bar for either.
_NOT_SHOWN = (STUDY_UNIT, REPORT_UNIT)


class StatusDisplay:
    """Turns successive statuses of one job into Display calls, each change once."""

    def __init__(self, display: Display) -> None:
        self.display = display
        self.started: set[str] = set()
        self.finished: set[str] = set()
        self.epoch = 0

    def update(self, status: TrainingJobStatus) -> None:
        for stage_name, stage in status.stages.items():
            if stage_name == "tuning":
                continue  # Display.sweep below: one bar for the sweep, a row per trial
            for unit, record in stage.units.items():
                if unit in _NOT_SHOWN or TrialSweep.index(unit) is not None:
                    continue
                if record.phase != StagePhase.PENDING and unit not in self.started:
                    self.started.add(unit)
                    total = status.training.epochs if stage_name == "training" and \
                        status.training and unit == "train" else None
                    self.display.start_unit(unit, total or None, stage_name)
                if unit == "train":
                    self._epoch(status)
                if StagePhase(record.phase).finished and unit not in self.finished:
                    self.finished.add(unit)
                    self.display.finish_unit(unit, ok=record.phase == StagePhase.SUCCEEDED)
        self.display.sweep(status)

    def _epoch(self, status: TrainingJobStatus) -> None:
        training = status.training
        if training is None or training.epoch <= self.epoch:
            return
        self.epoch = training.epoch
        self.display.epoch("train", {"epoch": training.epoch, "epochs": training.epochs,
                                     "best_epoch": training.best_epoch, **training.metrics})
