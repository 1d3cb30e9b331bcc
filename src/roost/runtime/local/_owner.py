"""Owners written by roost versions from before leases (``_lease.py``): ``pid:starttime:nonce``.

Such a token is checked as those versions checked it, so a process of an older version still
running on a journal keeps its runs. Tokens this version writes never go through here: a pid
says nothing across PID namespaces, and is reused.
"""

from __future__ import annotations

import os


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            # Fields after the parenthesised command name (which may hold spaces): state is
            # field 3, start time field 22. A zombie has exited already.
            fields = f.read().rsplit(")", 1)[1].split()
            return None if fields[0] in ("Z", "X") else fields[19]
    except (OSError, IndexError):
        return None


def legacy_alive(token: str) -> bool:
    """Whether the process that wrote the old-style ``token`` may still be running its runs."""
    try:
        pid_s, start, _ = token.split(":")
        pid = int(pid_s)
    except ValueError:
        return False
    if pid == os.getpid():
        return False  # this process runs this version: the token is from an earlier process
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
