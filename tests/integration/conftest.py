"""Fixtures of the operator tests (defined in k8s.py with the helpers they share)."""

from k8s import cluster, namespace, operator

__all__ = ["cluster", "namespace", "operator"]
