"""The user's own traceback of a failure, as text that travels with the error through journals.

A step may fail in another process (a Restate endpoint, a Temporal activity worker), so the
traceback is formatted where the exception was raised and carried as text from then on. roost's
own frames (and those of the event loop and the thread pool it runs steps on) are left out: what
remains is the user's code, which is what a reader of a failed run needs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import traceback

MAX_FRAMES = 20
"""Frames kept per exception of the chain: the innermost ones, where it was raised."""

_HIDDEN = tuple(os.path.dirname(os.path.abspath(path)) + os.sep
                for path in (__file__, asyncio.__file__, concurrent.futures.__file__))
"""roost's package, and the stdlib packages through which roost runs the user's code (the
event loop, the thread pool of sync steps)."""

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>.+)$', re.MULTILINE)


def _hidden(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_HIDDEN)


def _trim(te: traceback.TracebackException, seen: set[int]) -> bool:
    """Drop roost's frames from ``te`` and its chain; False if none of the user's remain anywhere."""
    if id(te) in seen:
        return False
    seen.add(id(te))
    frames = [f for f in te.stack if not _hidden(f.filename)][-MAX_FRAMES:]
    te.stack = traceback.StackSummary.from_list(frames)
    mine = bool(frames)
    for attr in ("__cause__", "__context__"):
        chained = getattr(te, attr)
        if attr == "__context__" and te.__suppress_context__:
            chained = te.__context__ = None  # 'raise ... from': not shown, so it does not count
        if chained is not None and not _trim(chained, seen):
            setattr(te, attr, None)  # a chained exception raised inside roost only: noise for the user
        mine = mine or getattr(te, attr) is not None
    return mine


def user_traceback(exc: BaseException) -> str | None:
    """``exc``'s traceback without roost's frames, or None when no frame of user code raised it
    (an error of roost's own, such as an output that breaks its contract).

    An exception rebuilt from a record (a step that failed in another process) carries the text
    formatted where it was raised, as ``user_traceback``."""
    carried = getattr(exc, "user_traceback", None)
    if isinstance(carried, str) or exc.__traceback__ is None:
        return carried if isinstance(carried, str) else None
    try:
        te = traceback.TracebackException.from_exception(exc)
        if not _trim(te, set()):
            return None
        return "".join(te.format()).rstrip("\n")
    except Exception:  # formatting must never be what fails a run
        return None


def raised_at(text: str | None) -> str | None:
    """``file:line, in fn`` of the innermost frame of a traceback text (where it was raised)."""
    frames = list(_FRAME.finditer(text or ""))
    if not frames:
        return None
    last = frames[-1]
    return f"{last['file']}:{last['line']}, in {last['fn'].strip()}"
