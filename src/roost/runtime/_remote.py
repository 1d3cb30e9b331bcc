"""The context of a runtime still on the older per-activation path (Temporal, until issue 11).

It runs one activation inside the engine's journaled code and reports it afterwards: the
activation's identity, the position counter that names steps and messages, the ids of the
messages it sent, its attempts and the timings of its first and last step. ``RemoteStepError``
is shared with the Restate runtime.
"""

from __future__ import annotations

import functools
from typing import Any

from .._activation import Message, outgoing
from .._graph import CompiledApp
from ._base import DurableContext
from ._retry import RetryPolicy


class RemoteStepError(Exception):
    """The last exception of a step whose attempts ran in the engine (type name and message)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@functools.lru_cache(maxsize=256)
def remote_error(kind: str) -> type[RemoteStepError]:
    """An exception class named like the step's last exception (its messages read the same)."""
    return type(kind if kind.isidentifier() else "StepError", (RemoteStepError,), {})


class EngineContext(DurableContext):
    def __init__(self, app: CompiledApp, msg: Message, key: str) -> None:
        self._app = app
        self._msg = msg
        self.run_id = msg.run_id
        self.agent = msg.target
        self.activation_id = msg.id
        self.caused_by = msg.cause
        self.key = key
        self._position = 0
        self.produced: list[str] = []
        """Ids of the messages sent by ``send``/``call`` (the run waits for each)."""
        self.attempts = 1
        self.started: float | None = None
        self.finished: float | None = None

    def _next(self) -> int:
        """The next position in the activation: steps and messages are named by it."""
        self._position += 1
        return self._position - 1

    def _begin_step(self, retry: RetryPolicy | None) -> tuple[RetryPolicy, str]:
        """The policy a step runs under and its idempotency key (``run/activation/position``)."""
        pos = self._next()
        return retry or self._app.specs[self.agent].retry, f"{self.run_id}/{self.activation_id}/{pos}"

    def _record_step(self, done: dict[str, Any]) -> None:
        """Note a finished step's attempts and timings (``n``, ``t0``, ``t1`` of its result)."""
        self.attempts = max(self.attempts, int(done.get("n", 1)))
        self.started = done["t0"] if self.started is None else self.started
        self.finished = done["t1"]

    def _message(self, agent: str, payload: Any, kind: str) -> Message:
        return outgoing(self._app, self, agent, payload, kind=kind, position=self._next())
