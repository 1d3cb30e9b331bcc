"""What the contexts of the engine-backed runtimes (Restate, Temporal) share: how a step that
failed inside the engine (its attempts ran there) is named for the user."""

from __future__ import annotations

import functools


class RemoteStepError(Exception):
    """The last exception of a step whose attempts ran in the engine (type name and message)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@functools.lru_cache(maxsize=256)
def remote_error(kind: str) -> type[RemoteStepError]:
    """An exception class named like the step's last exception (its messages read the same)."""
    return type(kind if kind.isidentifier() else "StepError", (RemoteStepError,), {})
