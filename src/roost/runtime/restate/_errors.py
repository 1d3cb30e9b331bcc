"""Translation between roost errors and Restate's, at the adapter boundary."""

from __future__ import annotations

import json
from typing import Any

import restate

from ...errors import TerminalError

_TAG = "roost-error:"


def to_restate(exc: Exception, *, attempt: int, retryable: bool) -> Exception:
    """The Restate exception that makes Restate retry (or not) a failed step attempt."""
    detail = json.dumps({"type": type(exc).__name__, "message": str(exc), "attempt": attempt})
    if isinstance(exc, TerminalError) or not retryable:
        return restate.TerminalError(_TAG + detail)
    return exc  # any other exception: Restate retries it per the step's RunOptions


def describe(exc: restate.TerminalError) -> dict[str, Any]:
    """Error type and message of a step that failed for good, as roost recorded them."""
    message = exc.message
    start = message.find(_TAG)
    if start >= 0:
        try:
            raw = message[start + len(_TAG):]
            data: dict[str, Any] = json.loads(raw[: raw.rfind("}") + 1])
            return data
        except ValueError:
            pass
    # Restate gave up retrying: its message wraps the last attempt's repr(exception).
    inner = message.split(": ", 1)[-1] if "attempt" in message.lower() else message
    kind, _, text = inner.partition("(")
    if text.endswith(")") and kind.isidentifier():
        return {"type": kind, "message": text[:-1].strip("'\"")}
    return {"type": "Error", "message": message}
