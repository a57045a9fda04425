"""``spec.explanation`` and ``spec.findings``: SHAP explanations, the overfitting finding (and what
it does), prices and budget."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..base import ApiModel
from .common import CURRENCY_PATTERN, FieldProblem


class ExplanationSpec(ApiModel):
    """The explanation stage: SHAP values of the trained model."""

    enabled: bool = False
    """Run the explanation stage after training."""
    method: Literal["auto", "gradient", "deep", "permutation", "kernel"] = "auto"
    """auto picks gradient (expected gradients) for torch models."""
    samples: int = Field(default=100, ge=1, le=100000)
    """Test examples to explain."""
    background: int = Field(default=50, ge=1, le=10000)
    """Background (reference) examples from the training split."""
    top_k: int = Field(default=10, ge=1, le=1000)
    """Features listed in status."""


RemediableVerdict = Literal["overfitting", "suspected"]


def _overfitting_only() -> list[RemediableVerdict]:
    return ["overfitting"]


class RemediationSpec(ApiModel):
    """How findings.overfitting.action: remediate trains again."""

    max_attempts: int = Field(default=3, ge=1, le=10)
    """Retrainings at most, each a training unit with its own findings and cost."""
    on: list[RemediableVerdict] = Field(default_factory=_overfitting_only, min_length=1)
    """The verdicts that start (and continue) remediation; add suspected to act on it too."""


class OverfittingSpec(ApiModel):
    """When to call a run overfitting, and what to do about it."""

    gap_threshold: float = Field(default=0.1, gt=0, le=100)
    """Relative gap (val_loss - train_loss) / train_loss above which the gap rule counts."""
    patience: int = Field(default=3, ge=1, le=1000)
    """Consecutive evaluations a rule must hold before it fires."""
    warmup_epochs: int = Field(default=2, ge=0, le=10000)
    """Epochs ignored at the start, when losses move fast."""
    min_delta: float = Field(default=0.01, ge=0, le=1)
    """Relative improvement of the validation loss that counts as improving (trend rule)."""
    action: Literal["none", "stop", "remediate"] = "none"
    """stop: end training when overfitting is detected and keep the best checkpoint.
    remediate: when the final training's verdict is one of remediation.on, train again with
    the regularization the recommendations name (one change or a small set per attempt, up to
    remediation.maxAttempts) and deliver the attempt with the best validation metric."""
    remediation: RemediationSpec | None = None
    """Settings of action: remediate (defaults when unset)."""

    @model_validator(mode="after")
    def _remediation_only_with_remediate(self) -> OverfittingSpec:
        if self.remediation is not None and self.action != "remediate":
            raise FieldProblem("remediation", f"applies to action: remediate only (action is "
                               f"{self.action}); set action: remediate or remove it")
        return self

    @property
    def remediation_settings(self) -> RemediationSpec:
        """The remediation settings in force (the defaults when the section is unset)."""
        return self.remediation or RemediationSpec()


class PricesSpec(ApiModel):
    """Prices per hour of requested resources."""

    cpu_hour: float = Field(default=0.031611, ge=0)
    """Per vCPU-hour. Default: Google Cloud N2, us-central1, on-demand list price."""
    memory_gi_b_hour: float = Field(default=0.004237, ge=0, alias="memoryGiBHour")
    """Per GiB-hour. Default: Google Cloud N2, us-central1, on-demand list price."""
    gpu_hour: float = Field(default=2.933908, ge=0)
    """Per GPU-hour. Default: Google Cloud NVIDIA A100 40GB, us-central1, on-demand list price."""
    currency: str = Field(default="USD", pattern=CURRENCY_PATTERN)
    """ISO 4217 code of the prices, e.g. USD or EUR."""


class BudgetSpec(ApiModel):
    """A spending limit for the whole job."""

    max_cost: float = Field(gt=0)
    """Stop launching work once the job's cost reaches this (in the price currency)."""
    action: Literal["stop", "warn"] = "stop"
    """stop: launch no further work once the budget is reached; warn: only set the
    BudgetExceeded condition."""


class CostSpec(ApiModel):
    """How the cost finding prices the requested resources, and an optional budget."""

    prices: PricesSpec = Field(default_factory=PricesSpec)
    price_config_map: str | None = None
    """On Kubernetes: a ConfigMap with keys cpuHour, memoryGiBHour, gpuHour, currency."""
    budget: BudgetSpec | None = None


class FindingsSpec(ApiModel):
    """Settings of the findings computed from the run: overfitting and cost."""

    overfitting: OverfittingSpec = Field(default_factory=OverfittingSpec)
    cost: CostSpec = Field(default_factory=CostSpec)
