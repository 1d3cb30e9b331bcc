"""Identity of concurrent branches inside orchestration code, independent of completion order.

An activation's code may run branches concurrently (``asyncio.gather``, ``create_task``,
``TaskGroup``). Each ``ctx`` call gets a position named by its branch's path and a counter
within that branch, never by the order in which things finished. A task factory installed on
the loop forks a child branch whenever a task is created inside an activation: the parent's
fork counter advances in the parent's own (deterministic) code order, so on replay each branch
gets the same path back, and with it its own journal entries.

roost's own waits inside ``ctx`` calls are marked ``internal()`` and fork nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import NonDeterminismError


class Branch:
    """A path of forks from the activation's root, and the counters of what it started."""

    __slots__ = ("_forks", "_steps", "owner", "path")

    def __init__(self, owner: object, path: str = "") -> None:
        self.owner = owner
        self.path = path
        self._steps = 0
        self._forks = 0

    def position(self) -> str:
        """The next ``ctx`` call's position: ``3`` at the root, ``1.0:3`` in a nested branch."""
        n = self._steps
        self._steps += 1
        return str(n) if not self.path else f"{self.path}:{n}"

    def fork(self) -> Branch:
        j = self._forks
        self._forks += 1
        return Branch(self.owner, f"{self.path}.{j}" if self.path else str(j))


_branch: contextvars.ContextVar[Branch | None] = contextvars.ContextVar("roost_branch", default=None)
_internal: contextvars.ContextVar[bool] = contextvars.ContextVar("roost_internal", default=False)


@contextmanager
def root(owner: object) -> Iterator[Branch]:
    """Run an activation's code as the root branch of ``owner`` (its context)."""
    branch = Branch(owner)
    token = _branch.set(branch)
    try:
        yield branch
    finally:
        _branch.reset(token)


@contextmanager
def internal() -> Iterator[None]:
    """roost's own awaits: tasks created here are not branches of the user's code."""
    token = _internal.set(True)
    try:
        yield
    finally:
        _internal.reset(token)


def detached() -> contextvars.Context:
    """A copy of the current context outside any activation (for tasks the runtime starts)."""
    ctx = contextvars.copy_context()
    ctx.run(_branch.set, None)
    ctx.run(_internal.set, False)
    return ctx


def position(owner: object, thread: int, *, run_id: str, agent: str, call: str) -> str:
    """The position of a ``ctx`` call made by ``owner``'s code (on the loop's ``thread``);
    refuses calls from elsewhere."""
    branch = _branch.get()
    if threading.get_ident() != thread:
        raise _refused(run_id, agent, call, "from a thread: ctx calls belong in the activation's async code")
    if _internal.get():
        raise _refused(run_id, agent, call, "inside a step or another ctx call: steps must not use ctx")
    if branch is None or branch.owner is not owner:
        raise _refused(run_id, agent, call, "from a task that is not part of this activation (a ctx kept and used "
                       "elsewhere, or a task started outside it)")
    return branch.position()


def _refused(run_id: str, agent: str, call: str, why: str) -> NonDeterminismError:
    return NonDeterminismError(run_id=run_id, agent=agent, position=-1, recorded="nothing (refused)",
                               requested=f"ctx.{call} {why}")


def fork_on_create(loop: asyncio.AbstractEventLoop) -> None:
    """``install`` for a loop without task factories (Temporal's workflow loop): its own
    ``create_task`` is wrapped to fork the branch (idempotent)."""
    create = loop.create_task
    if getattr(create, "_roost_branches", False):
        return

    def create_task(coro: Any, *, name: str | None = None, context: contextvars.Context | None = None) -> Any:
        parent = context.get(_branch) if context is not None else _branch.get()
        inside = context.get(_internal, False) if context is not None else _internal.get()
        if parent is not None and not inside:
            context = context.copy() if context is not None else contextvars.copy_context()
            context.run(_branch.set, parent.fork())
        return create(coro, name=name, context=context)

    create_task._roost_branches = True  # type: ignore[attr-defined]
    loop.create_task = create_task  # type: ignore[method-assign]


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Fork branches on task creation in ``loop`` (idempotent; chains a factory already set)."""
    previous = loop.get_task_factory()
    if getattr(previous, "_roost_branches", False):
        return

    def factory(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any) -> asyncio.Future[Any]:
        context: contextvars.Context | None = kwargs.pop("context", None)
        parent = context.get(_branch) if context is not None else _branch.get()
        inside = context.get(_internal, False) if context is not None else _internal.get()
        forked = parent is not None and not inside
        if forked:
            assert parent is not None
            context = context.copy() if context is not None else contextvars.copy_context()
            context.run(_branch.set, parent.fork())
        if context is not None:
            kwargs["context"] = context
        task = previous(loop, coro, **kwargs) if previous is not None else asyncio.Task(coro, loop=loop, **kwargs)
        adopt = getattr(parent.owner, "adopt_task", None) if forked and parent is not None else None
        if adopt is not None:  # a backend that schedules the activation's tasks itself (Restate)
            adopt(task)
        return task

    factory._roost_branches = True  # type: ignore[attr-defined]
    loop.set_task_factory(factory)  # type: ignore[arg-type]
