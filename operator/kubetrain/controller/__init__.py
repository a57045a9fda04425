"""The Kubernetes executor: kopf handlers, object builders and the reconcile decision."""
