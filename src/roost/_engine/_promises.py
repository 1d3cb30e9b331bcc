"""Which resolutions a run takes: approval values and promise names, the same on every runtime.

An approval is answered with a yes or a no; anything else (``[False]``, ``0``, ``"maybe"``) is
refused where it is resolved, because reading it as truthy or falsy guesses what the caller
meant. A promise name is refused when the run does not wait on it and cannot wait on it later
(``resolution_problem``); resolving a ``ctx.promise`` name before the run reaches it stays
allowed, since orchestration code may ask for any name at any time.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._graph import CompiledApp

YES = frozenset({"true", "yes", "y", "approve", "approved"})
NO = frozenset({"false", "no", "n", "reject", "rejected"})


def approval_decision(value: Any) -> bool | None:
    """True (approved), False (rejected), or None when ``value`` is neither a yes nor a no.

    A yes or a no is a bool, ``{"approved": bool}`` (other keys, a reason say, are kept with the
    value), or one of the words in YES / NO in any case (what a command line or a form sends)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, dict):
        inner = value.get("approved", value.get("approve"))
        return inner if isinstance(inner, bool) else None
    if isinstance(value, str):
        word = value.strip().lower()
        return True if word in YES else False if word in NO else None
    return None


def is_approved(value: Any) -> bool:
    """How the engine reads an approval's value. Only a yes approves: a value that reached the
    run without the check at resolve time (a Temporal signal sent while no worker ran) and is
    neither a yes nor a no counts as a rejection."""
    return approval_decision(value) is True


def is_approval_name(app: CompiledApp, name: str) -> bool:
    """Whether ``name`` is what an approval of ``app`` is called: its agent's name, with a batch
    label (``editor[2]``) or a count (``editor#2``) after it."""
    return any(spec.approval and (name == spec.name or name.startswith((f"{spec.name}[", f"{spec.name}#")))
               for spec in app.specs.values())


def may_await_any_name(app: CompiledApp) -> bool:
    """Whether some agent of ``app`` runs orchestration code, which may call ``ctx.promise``
    with any name (so no name can be called unknown before the run ends)."""
    return any(spec.engine.awaits_promises for spec in app.specs.values())


def resolution_problem(app: CompiledApp | None, name: str, value: Any, waiting: Collection[str],
                       approvals: Collection[str] = ()) -> str | None:
    """Why a running run refuses resolving ``name`` with ``value``, or None if it takes it.

    ``waiting``: the names the run waits on now; ``approvals``: those of them known to be
    approvals; ``app``: the run's app, None when the caller does not have it (then only names
    known to be approvals are checked). Finished runs and names resolved already are the
    caller's to refuse first."""
    approval = name in approvals or (app is not None and is_approval_name(app, name))
    if approval:
        if approval_decision(value) is None:
            return (f"{name!r} is an approval: answer it with true or false (or {{\"approved\": true|false}}, "
                    f"or one of the words {', '.join(sorted(YES | NO))}), not {value!r}")
        return None
    if name in waiting or app is None or may_await_any_name(app):
        return None
    listing = ", ".join(repr(n) for n in waiting) or "nothing right now"
    return (f"no promise named {name!r} is awaited, and none can be: app {app.name!r} has no orchestration code "
            f"calling ctx.promise, and no approval of that name; the run waits on {listing}")
