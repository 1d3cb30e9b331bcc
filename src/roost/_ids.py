"""Run ids as callers give them: checked once where they enter (App, RunHandle, the CLI)."""

from __future__ import annotations

import uuid

from .errors import UsageError


def checked_run_id(run_id: object, *, what: str = "run_id", new_ok: bool = False) -> str:
    """``run_id`` if it can name a run, else UsageError.

    An empty or blank id is refused rather than replaced: a caller who passes ``run_id=""``
    means a particular run, and a random id would start a new run on every retry instead of
    attaching to the one already started. Surrounding whitespace is refused too, so that
    ``"r1 "`` cannot name another run than ``"r1"`` by accident."""
    if not isinstance(run_id, str):
        kinds = "a string or None" if new_ok else "a string"
        raise UsageError(f"{what} must be {kinds}, got {type(run_id).__name__} {run_id!r}")
    if not run_id.strip():
        hint = " (pass None for a new id)" if new_ok else ""
        raise UsageError(f"{what} must not be empty or blank, got {run_id!r}{hint}")
    if run_id != run_id.strip():
        raise UsageError(f"{what} must not start or end with whitespace, got {run_id!r}")
    return run_id


def run_id_or_new(run_id: str | None) -> str:
    """The given run id (checked), or a new one for ``None``."""
    return f"run-{uuid.uuid4().hex[:12]}" if run_id is None else checked_run_id(run_id, new_ok=True)
