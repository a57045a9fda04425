"""SHAP values of one output per sample: the predicted class (or the regression output).

Every method returns an :class:`Attribution`: per-sample SHAP values of the explained output
(flattened to features), the output f(x) itself and the base value E[f(background)] of the
background that method used, all in the network's output units (logits; the standardized
target for regression). The completeness (additivity) check needs nothing else.

- ``gradient``: expected gradients, the estimator of ``shap.GradientExplainer``. shap's own
  implementation loops in Python over samples and over background draws (100 digit images took
  49.9 s on an H100). ``implementation="batched"`` (the default) computes the same estimator
  for all samples at once, on the model's device, with the background draws stratified (every
  background row, ``nsamples / background`` points along each path) so that the values add up
  to f(x) - E[f(background)] closely. ``implementation="shap"`` calls ``shap.GradientExplainer``
  with ``ranked_outputs=1`` (for comparisons).
- ``deep``: ``shap.DeepExplainer`` (DeepLIFT rescale rule). It silently gives wrong values for
  layers it does not support; the completeness error is how one notices.
- ``kernel``: ``shap.KernelExplainer`` on a numpy wrapper, the background summarized with
  ``shap.kmeans``; model-agnostic and slow.
- ``permutation``: ``shap.PermutationExplainer`` with an independent masker over the background.

kernel and permutation explain one output at a time, so samples are grouped by predicted class
and each group is explained with the logit of its class.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .model import ExplainError, TrainedModel

METHODS = ("gradient", "deep", "kernel", "permutation")
Method = Literal["gradient", "deep", "kernel", "permutation"]
DEFAULT_GRADIENT_SAMPLES = 200
"""Gradient evaluations per explained sample (expected gradients)."""
KERNEL_BACKGROUND = 20
"""Background rows kept for kernel SHAP (k-means centres weighted by cluster size)."""
PREDICT_BATCH = 8192
GRADIENT_ROWS = 8192
"""Rows per forward/backward pass in the batched expected gradients (fewer for big inputs)."""
GRADIENT_ELEMENTS = 1 << 24
"""Input elements per forward/backward pass (64 MiB of float32 per input-sized tensor)."""


@dataclass
class Attribution:
    """SHAP values of the explained output of each sample."""

    method: str
    values: np.ndarray
    """(N, F): one value per feature (pixels flattened in C, H, W order)."""
    targets: np.ndarray
    """(N,): the explained output (class index; 0 for regression)."""
    outputs: np.ndarray
    """(N,): f(x), the explained output for each sample."""
    base: np.ndarray
    """(N,): E[f(background)] for the explained output of each sample."""
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    """Method settings that were used (nsamples, background kept, ...)."""

    @property
    def residual(self) -> np.ndarray:
        """sum(SHAP) - (f(x) - E[f(bg)]) per sample: 0 for a complete explanation."""
        return np.asarray(self.values.sum(axis=1) - (self.outputs - self.base))


def import_shap() -> Any:
    """shap, without the deprecation chatter its plotting colour maps print on import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import shap
    return shap


def resolve_method(method: str) -> Method:
    if method == "auto":
        return "gradient"
    if method not in METHODS:
        raise ExplainError(f"explanation.method: unknown method {method!r}; "
                           f"allowed: auto, {', '.join(METHODS)}")
    return method  # type: ignore[return-value]


def predict(model: nn.Module, X: np.ndarray | torch.Tensor, device: torch.device,
            batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """The network's raw outputs (N, K) as float64 numpy, in batches, without gradients."""
    xt = torch.as_tensor(np.asarray(X, dtype=np.float32)) if isinstance(X, np.ndarray) else X
    outs = []
    with torch.no_grad():
        for start in range(0, xt.shape[0], batch_size):
            batch = xt[start:start + batch_size].to(device, non_blocking=True)
            outs.append(model(batch).float().cpu())
    if not outs:
        return np.zeros((0, 1))
    return torch.cat(outs).double().numpy()


def explain(trained: TrainedModel, background: np.ndarray, samples: np.ndarray,
            method: str = "auto", *, nsamples: int | None = None, seed: int = 0,
            implementation: Literal["batched", "shap"] = "batched") -> Attribution:
    """SHAP values of the predicted class (or the regression output) of each sample.

    ``background`` and ``samples`` are standardized rows shaped like the model's input.
    ``nsamples``: gradient evaluations per sample (gradient), coalitions per sample (kernel),
    model evaluations per sample (permutation); None picks each method's default.
    """
    resolved = resolve_method(method)
    model, device = trained.model, trained.device
    started = time.perf_counter()
    logits = predict(model, samples, device)
    targets = (logits.argmax(axis=1) if trained.task == "classification" and logits.shape[1] > 1
               else np.zeros(len(samples), dtype=np.int64))
    outputs = logits[np.arange(len(samples)), targets]
    bg_out = predict(model, background, device)
    if resolved == "gradient":
        if implementation == "shap":
            values, details = _gradient_shap(model, background, samples, targets, device,
                                             nsamples or DEFAULT_GRADIENT_SAMPLES, seed)
        else:
            values, details = _gradient_batched(model, background, samples, targets, device,
                                                nsamples or DEFAULT_GRADIENT_SAMPLES, seed)
        base = bg_out[:, targets].mean(axis=0)
    elif resolved == "deep":
        values, details = _deep(model, background, samples, targets, device)
        base = bg_out[:, targets].mean(axis=0)
    elif resolved == "kernel":
        values, base, details = _kernel(model, background, samples, targets, device, nsamples,
                                        seed, trained.input_shape)
    else:
        values, base, details = _permutation(model, background, samples, targets, device,
                                             nsamples, seed, trained.input_shape)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Attribution(
        method=resolved,
        values=np.asarray(values, dtype=np.float64).reshape(len(samples), -1),
        targets=targets.astype(np.int64),
        outputs=outputs.astype(np.float64),
        base=np.asarray(base, dtype=np.float64).reshape(len(samples)),
        seconds=time.perf_counter() - started,
        details={"implementation": implementation if resolved == "gradient" else "shap",
                 **details},
    )


# ---------------------------------------------------------------------------------------------
# gradient: expected gradients


def expected_gradients(model: nn.Module, x: torch.Tensor, background: torch.Tensor,
                       targets: torch.Tensor, nsamples: int, seed: int = 0,
                       max_rows: int = GRADIENT_ROWS) -> torch.Tensor:
    """Expected gradients E_{x', a}[(x - x') * df_t/dx (x' + a (x - x'))] for a batch.

    The estimator of shap.GradientExplainer (without local smoothing), computed for all samples
    at once. With ``nsamples >= len(background)`` every background row is used
    ``m = ceil(nsamples / B)`` times with stratified path positions a in [j/m, (j+1)/m), so the
    values sum to f(x) - mean f(background) up to the quadrature error along each path.
    With fewer samples than background rows, each sample draws ``nsamples`` distinct rows.
    """
    n, b = x.shape[0], background.shape[0]
    device = x.device
    gen = torch.Generator().manual_seed(seed)
    if nsamples >= b:
        per_ref = math.ceil(nsamples / b)
        rows = b * per_ref
        ref_idx = torch.arange(b).repeat_interleave(per_ref).expand(n, rows)
        strata = torch.arange(per_ref, dtype=torch.float32).repeat(b).expand(n, rows)
        alpha = (strata + torch.rand(n, rows, generator=gen)) / per_ref
    else:
        rows = nsamples
        ref_idx = torch.rand(n, b, generator=gen).argsort(dim=1)[:, :rows]
        alpha = torch.rand(n, rows, generator=gen)
    ref_idx, alpha = ref_idx.to(device), alpha.to(device)
    features = max(1, x[0].numel())
    chunk = max(1, min(max_rows, GRADIENT_ELEMENTS // features) // rows)
    extra = (1,) * (x.dim() - 1)
    phis = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        xs = x[start:stop]
        refs = background[ref_idx[start:stop]]  # (c, rows, ...)
        delta = xs.unsqueeze(1) - refs
        points = (refs + alpha[start:stop].view(stop - start, rows, *extra) * delta)
        points = points.reshape(-1, *x.shape[1:]).detach().requires_grad_(True)
        with torch.enable_grad():
            out = model(points)
            picked = out.gather(1, targets[start:stop].repeat_interleave(rows).view(-1, 1))
            (grad,) = torch.autograd.grad(picked.sum(), points)
        phis.append((grad.view_as(delta) * delta).mean(dim=1).detach())
    return torch.cat(phis)


def _gradient_batched(model: nn.Module, background: np.ndarray, samples: np.ndarray,
                      targets: np.ndarray, device: torch.device, nsamples: int,
                      seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    x = torch.as_tensor(samples, dtype=torch.float32, device=device)
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    t = torch.as_tensor(targets, dtype=torch.long, device=device)
    phi = expected_gradients(model, x, bg, t, nsamples, seed)
    b = len(background)
    used = b * math.ceil(nsamples / b) if nsamples >= b else nsamples
    return phi.double().cpu().numpy(), {"nsamples": used}


def _gradient_shap(model: nn.Module, background: np.ndarray, samples: np.ndarray,
                   targets: np.ndarray, device: torch.device, nsamples: int,
                   seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    shap = import_shap()

    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    x = torch.as_tensor(samples, dtype=torch.float32, device=device)
    explainer = shap.GradientExplainer(model, bg)
    values, ranks = explainer.shap_values(x, nsamples=nsamples, ranked_outputs=1,
                                          output_rank_order="max", rseed=seed)
    ranks = np.asarray(ranks.cpu() if hasattr(ranks, "cpu") else ranks)
    if ranks.shape[0] and not np.array_equal(ranks[:, 0], targets):
        raise ExplainError("shap.GradientExplainer explained another output than the predicted "
                           "class")
    return np.asarray(values)[..., 0], {"nsamples": nsamples}


# ---------------------------------------------------------------------------------------------
# deep


def _deep(model: nn.Module, background: np.ndarray, samples: np.ndarray, targets: np.ndarray,
          device: torch.device) -> tuple[np.ndarray, dict[str, Any]]:
    shap = import_shap()

    # DeepExplainer registers hooks on the modules: give it its own copy, with gradients on.
    copied = copy.deepcopy(model).eval()
    for module in copied.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            setattr(module, "inplace", False)  # noqa: B010  in-place ReLUs break its hooks
    for param in copied.parameters():
        param.requires_grad_(True)
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    x = torch.as_tensor(samples, dtype=torch.float32, device=device)
    explainer = shap.DeepExplainer(copied, bg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unrecognized-module warnings
        result = explainer.shap_values(x, ranked_outputs=1, output_rank_order="max",
                                       check_additivity=False)
    if isinstance(result, tuple):
        values, ranks = result
        ranks = np.asarray(ranks.cpu() if hasattr(ranks, "cpu") else ranks)
        if ranks.ndim == 2 and ranks.shape[0] and not np.array_equal(ranks[:, 0], targets):
            raise ExplainError("shap.DeepExplainer explained another output than the predicted "
                               "class")
    else:
        values = result
    arr = np.asarray(values[0] if isinstance(values, list) else values)
    if arr.ndim == len(samples.shape) + 1:
        arr = arr[..., 0]
    return arr, {}


# ---------------------------------------------------------------------------------------------
# kernel and permutation: one output per call, so one call per predicted class


def _class_function(model: nn.Module, device: torch.device, input_shape: tuple[int, ...],
                    target: int) -> Callable[[np.ndarray], np.ndarray]:
    def f(Z: np.ndarray) -> np.ndarray:
        rows = np.asarray(Z, dtype=np.float32).reshape(-1, *input_shape)
        return predict(model, rows, device)[:, target]

    return f


def _kernel(model: nn.Module, background: np.ndarray, samples: np.ndarray, targets: np.ndarray,
            device: torch.device, nsamples: int | None, seed: int,
            input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    shap = import_shap()

    bg = background.reshape(len(background), -1).astype(np.float64)
    X = samples.reshape(len(samples), -1).astype(np.float64)
    summary: Any = bg
    kept = len(bg)
    if len(bg) > KERNEL_BACKGROUND:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn KMeans chatter
            summary = shap.kmeans(bg, KERNEL_BACKGROUND)
        kept = KERNEL_BACKGROUND
    n_coalitions: int | str = nsamples if nsamples else "auto"
    values = np.zeros_like(X)
    base = np.zeros(len(X))
    for target in np.unique(targets):
        idx = np.flatnonzero(targets == target)
        f = _class_function(model, device, input_shape, int(target))
        explainer = shap.KernelExplainer(f, summary, link="identity")
        np.random.seed(seed)  # KernelExplainer draws coalitions from numpy's global RNG
        out = explainer.shap_values(X[idx], nsamples=n_coalitions, l1_reg=False, silent=True)
        values[idx] = np.asarray(out).reshape(len(idx), -1)
        base[idx] = float(np.asarray(explainer.expected_value).reshape(-1)[0])
    used = nsamples if nsamples else 2 * X.shape[1] + 2048
    return values, base, {"nsamples": used, "background_kept": kept,
                          "background_summary": "kmeans" if kept < len(bg) else "all rows"}


def _permutation(model: nn.Module, background: np.ndarray, samples: np.ndarray,
                 targets: np.ndarray, device: torch.device, nsamples: int | None, seed: int,
                 input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    shap = import_shap()

    bg = background.reshape(len(background), -1).astype(np.float64)
    X = samples.reshape(len(samples), -1).astype(np.float64)
    n_features = X.shape[1]
    minimum = 2 * n_features + 1
    max_evals = max(nsamples or 10 * minimum, minimum)
    masker = shap.maskers.Independent(bg, max_samples=len(bg))
    values = np.zeros_like(X)
    base = np.zeros(len(X))
    for target in np.unique(targets):
        idx = np.flatnonzero(targets == target)
        f = _class_function(model, device, input_shape, int(target))
        explainer = shap.PermutationExplainer(f, masker, seed=seed)
        out = explainer(X[idx], max_evals=max_evals, silent=True)
        values[idx] = np.asarray(out.values).reshape(len(idx), -1)
        base[idx] = np.asarray(out.base_values, dtype=np.float64).reshape(len(idx))
    return values, base, {"nsamples": max_evals, "permutations": max_evals // minimum}
