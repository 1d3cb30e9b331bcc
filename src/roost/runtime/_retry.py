"""Retry policy for durable steps."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from datetime import timedelta

from ..errors import RetryableError, TerminalError, UsageError


def seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def checked_seconds(value: float | timedelta, *, what: str, allow_timedelta: bool = True) -> float:
    """Seconds, refusing NaN, infinite and negative durations (and bools) with a clear error."""
    unit = " of seconds" if allow_timedelta else ""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, timedelta)) \
            or (isinstance(value, timedelta) and not allow_timedelta):
        kinds = "a number of seconds or a timedelta" if allow_timedelta else "a number"
        raise UsageError(f"{what} must be {kinds}, got {value!r}")
    secs = seconds(value)
    if math.isnan(secs) or math.isinf(secs) or secs < 0:
        raise UsageError(f"{what} must be a finite number{unit} >= 0, got {value!r}")
    return secs


def checked_timeout(value: float | timedelta | None, *, what: str) -> float | None:
    """A caller's wait limit: None (no limit) or a finite number of seconds >= 0."""
    return None if value is None else checked_seconds(value, what=what)


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
        # Checked here, not when a step fails: a NaN interval or a fractional attempt count would
        # otherwise surface (or hang) only on the first failure, far from the line that set it.
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, numbers.Integral) or attempts < 1:
            raise UsageError(f"RetryPolicy.max_attempts must be an integer >= 1, got {attempts!r}")
        object.__setattr__(self, "max_attempts", int(attempts))  # the policy travels as JSON (Temporal)
        for name in ("initial_interval", "max_interval", "backoff"):
            value = getattr(self, name)
            checked_seconds(value, what=f"RetryPolicy.{name}", allow_timedelta=False)
        if self.backoff < 1:
            raise UsageError(f"RetryPolicy.backoff must be >= 1 (1 keeps the interval constant), got {self.backoff!r}")
        types = self.non_retryable
        if isinstance(types, type):
            types = (types,)
        elif isinstance(types, list):
            types = tuple(types)
        if not isinstance(types, tuple) or not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
            raise UsageError(f"RetryPolicy.non_retryable must be exception types, got {self.non_retryable!r}")
        object.__setattr__(self, "non_retryable", types)

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
