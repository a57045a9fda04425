"""The study server's client: Optuna's ``GrpcStorageProxy`` riding out a server that is away.

Its own module so that grpc is imported only by processes that reach a study server
(``tuning.study.open_storage`` imports it when given one).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import grpc
import optuna

from .study import STUDY_SERVER_WAIT_SECONDS

# gRPC's default reconnect backoff grows to 120 s and a connection attempt may hang 20 s: a trial
# whose study server was unreachable for a minute would then wait minutes more after it came
# back (a CI run's two trials gave up at the 180 s mark, their server reachable for 2 of those
# minutes). Short, capped backoff: a reachable server is found again within ~5 s.
_CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 500),
                    ("grpc.min_reconnect_backoff_ms", 2000),
                    ("grpc.max_reconnect_backoff_ms", 5000))


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _WaitForReady(grpc.UnaryUnaryClientInterceptor):
    """Every call waits (up to ``seconds``) for the server to be reachable instead of failing at
    once while the channel reconnects."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        timeout = details.timeout if details.timeout is not None else self.seconds
        waiting = _CallDetails(details.method, timeout, details.metadata, details.credentials,
                               True, getattr(details, "compression", None))
        return continuation(waiting, request)


class StudyServerProxy(optuna.storages.GrpcStorageProxy):
    """Optuna's ``GrpcStorageProxy`` whose calls ride out a study server that is unreachable for
    a while (its pod restarting, its Service not yet routed): each waits up to
    ``wait_seconds`` for the connection, reconnecting with a short backoff."""

    def __init__(self, *, host: str, port: int,
                 wait_seconds: float = STUDY_SERVER_WAIT_SECONDS) -> None:
        self._wait_seconds = wait_seconds
        super().__init__(host=host, port=port)

    def _setup(self) -> None:
        super()._setup()  # Optuna's channel, stub and cache; the stub is remade over ours
        self._channel.close()
        channel = grpc.insecure_channel(f"{self._host}:{self._port}", options=[
            ("grpc.max_receive_message_length", -1), *_CHANNEL_OPTIONS])
        self._channel = grpc.intercept_channel(channel, _WaitForReady(self._wait_seconds))
        self._stub = type(self._stub)(self._channel)
        self._cache = type(self._cache)(self._stub)
