"""The explanation stage's library: SHAP values of a trained kubetrain model.

``load_trained_model`` rebuilds the network from ``model.pt``; ``select_data`` gives the
background (training rows) and the samples (test rows), standardized as in training;
``explain`` computes SHAP values of each sample's predicted class (or regression output);
``summarize`` turns them into global importance, top features and the completeness error;
``write_outputs`` writes analysis.json (SageMaker Clarify layout), local.json and plots.
"""

from .analysis import Summary, build_analysis, build_local, clarify_key, summarize
from .methods import METHODS, Attribution, expected_gradients, explain, predict, resolve_method
from .model import (
    ExplainData,
    ExplainError,
    TrainedModel,
    default_device,
    load_trained_model,
    select_data,
    trained_model_path,
)
from .outputs import ANALYSIS_FILE, LOCAL_FILE, Written, write_outputs

__all__ = [
    "ANALYSIS_FILE",
    "LOCAL_FILE",
    "METHODS",
    "Attribution",
    "ExplainData",
    "ExplainError",
    "Summary",
    "TrainedModel",
    "Written",
    "build_analysis",
    "build_local",
    "clarify_key",
    "default_device",
    "expected_gradients",
    "explain",
    "load_trained_model",
    "predict",
    "resolve_method",
    "select_data",
    "summarize",
    "trained_model_path",
    "write_outputs",
]
