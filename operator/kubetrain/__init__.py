"""kubetrain: one TrainingJob runs the whole deep-learning pipeline and reports its findings."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The client imports the Kubernetes libraries: only when asked for (`kubetrain run` and the
    # worker pods never need it).
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module 'kubetrain' has no attribute {name!r}")
