"""What the contexts of the engine-backed runtimes (Restate, Temporal) share: how a step that
failed inside the engine (its attempts ran there) is named for the user."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from .._traceback import user_traceback


class RemoteStepError(Exception):
    """The last exception of a step whose attempts ran in the engine (type name and message),
    with the user's traceback text formatted where it was raised (see ``roost._traceback``)."""

    def __init__(self, kind: str, message: str, user_traceback: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.user_traceback = user_traceback


@functools.lru_cache(maxsize=256)
def remote_error(kind: str) -> type[RemoteStepError]:
    """An exception class named like the step's last exception (its messages read the same)."""
    return type(kind if kind.isidentifier() else "StepError", (RemoteStepError,), {})


def step_failure(exc: BaseException) -> list[str | None]:
    """How a step's last exception is journaled: [type name, message, the user's traceback]."""
    kind = getattr(exc, "kind", None) or type(exc).__name__
    return [str(kind), str(exc), user_traceback(exc)]


def failed_step_error(recorded: Sequence[Any]) -> RemoteStepError:
    """The exception of a journaled step failure (see ``step_failure``; older entries have no traceback)."""
    kind, message, *rest = recorded
    return remote_error(str(kind))(str(kind), str(message), rest[0] if rest else None)
