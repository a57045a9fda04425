"""The client's typed errors: what went wrong, in terms a caller can catch one by one."""

from __future__ import annotations


class ClientError(Exception):
    """Any failure of a kubetrain.Client call."""


class InvalidSpec(ClientError):
    """The TrainingJob was refused: one line per problem, each naming the field."""

    def __init__(self, problems: list[str], source: str = "TrainingJob") -> None:
        self.problems = problems
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


class NotFound(ClientError):
    """No such TrainingJob (or pod, or unit)."""


class AlreadyExists(ClientError):
    """A TrainingJob of that name exists already."""


class Forbidden(ClientError):
    """The caller's credentials do not allow this (RBAC)."""


class WaitTimeout(ClientError):
    """wait() gave up before the job ended."""
