"""The tuning library: search spaces, Optuna studies that outlive every process, summaries.

The work units (``kubetrain.workloads.trial`` and ``kubetrain.workloads.tune``) and the
operator build on it; ``python -m kubetrain.tuning.serve`` is the study server.
"""
