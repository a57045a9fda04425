"""kubetrain: one TrainingJob runs the whole deep-learning pipeline and reports its findings."""

__version__ = "0.1.0"
