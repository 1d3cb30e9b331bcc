"""Waiting out another process's write lock on the journal: bounded, with back-off.

SQLite lets one connection write at a time. Each connection waits ``BUSY_MS`` inside SQLite
for the lock (short, because on the event loop's thread that wait blocks every run of the
process); past that, the write is tried again with back-off until ``LOCK_WAIT`` seconds have
gone by, asynchronously where an event loop is involved (``Committer``) and with sleeps
elsewhere (``retry_sync``). Only then does it fail, with a JournalBusyError naming the file.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from ...errors import JournalBusyError

T = TypeVar("T")

BUSY_MS = 1000  # SQLite's own wait for the lock, per attempt
LOCK_WAIT = 60.0  # seconds a write waits in all for a lock another process holds


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` says another connection holds a lock (the write may succeed later)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc)
    return "locked" in text or "busy" in text


def delays(first: float = 0.05, cap: float = 2.0) -> Iterator[float]:
    """Back-off between attempts: doubling from ``first`` up to ``cap``."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, cap)


def busy_error(path: str, waited: float, exc: BaseException) -> JournalBusyError:
    return JournalBusyError(
        f"the journal {path} stayed locked by another process for {waited:.0f} s ({exc}); roost waits at most "
        f"{LOCK_WAIT:.0f} s for its write lock. Find what holds it (another program with the file open in a "
        "transaction, a backup) and stop it; unfinished runs resume from their last committed step "
        "(roost runs resume RUN_ID)", path=path)


def retry_sync(path: str, fn: Callable[[], T], *, wait: float = LOCK_WAIT) -> T:
    """``fn()``, tried again while the database is busy, for ``wait`` seconds at most (blocking)."""
    start = time.monotonic()
    backoff = delays()
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            waited = time.monotonic() - start
            if waited >= wait:
                raise busy_error(path, waited, exc) from exc
            time.sleep(min(next(backoff), max(0.0, wait - waited)))
