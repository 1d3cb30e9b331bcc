"""Which process owns a run: a token per runtime instance, and a liveness check for tokens."""

from __future__ import annotations

import os
import uuid

_LIVE_TOKENS: set[str] = set()


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            # Fields after the parenthesised command name (which may hold spaces): state is
            # field 3, start time field 22. A zombie has exited already.
            fields = f.read().rsplit(")", 1)[1].split()
            return None if fields[0] in ("Z", "X") else fields[19]
    except (OSError, IndexError):
        return None


def new_token() -> str:
    pid = os.getpid()
    token = f"{pid}:{_start_time(pid) or '-'}:{uuid.uuid4().hex[:8]}"
    _LIVE_TOKENS.add(token)
    return token


def drop_token(token: str) -> None:
    _LIVE_TOKENS.discard(token)


def is_alive(token: str | None) -> bool:
    """Whether the runtime that holds ``token`` may still be running its runs."""
    if not token:
        return False
    try:
        pid_s, start, _ = token.split(":")
        pid = int(pid_s)
    except ValueError:
        return False
    if pid == os.getpid():
        return token in _LIVE_TOKENS
    now_start = _start_time(pid)
    if now_start is not None:
        return start in ("-", now_start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not os.path.isdir("/proc")  # /proc exists but has no such pid: gone
