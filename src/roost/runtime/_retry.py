"""Retry policy for durable steps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from ..errors import RetryableError, TerminalError, UsageError


def seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def checked_seconds(value: float | timedelta, *, what: str) -> float:
    """Seconds, refusing NaN, infinite and negative durations with a clear error."""
    try:
        secs = seconds(value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} must be a number of seconds or a timedelta, got {value!r}") from exc
    if math.isnan(secs) or math.isinf(secs) or secs < 0:
        raise UsageError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return secs


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast a failing step is tried again.

    A step is tried at most ``max_attempts`` times in all; waits between tries grow from
    ``initial_interval`` by ``backoff`` up to ``max_interval``. ``TerminalError`` (and its
    subclasses) and exception types in ``non_retryable`` fail at once. A ``RetryableError``
    with ``retry_after`` waits that long instead of the computed interval.
    """

    max_attempts: int = 3
    initial_interval: float = 0.2
    backoff: float = 2.0
    max_interval: float = 30.0
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if self.initial_interval < 0 or self.max_interval < 0 or self.backoff < 1:
            raise ValueError("RetryPolicy intervals must be >= 0 and backoff >= 1")

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, TerminalError):
            return False
        return not isinstance(exc, self.non_retryable)

    def delay(self, attempt: int, exc: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return max(0.0, exc.retry_after)
        return min(self.max_interval, self.initial_interval * self.backoff ** (attempt - 1))


DEFAULT_RETRY = RetryPolicy()
