"""Deterministic concurrency inside one Restate invocation.

Restate replays an invocation by matching the commands it issues, in order, against its
journal. Concurrent code (the activations of a run, the branches of one activation's
``asyncio.gather``) would issue commands in the order its tasks happen to be woken, which
differs between the first execution and a replay. So no task talks to Restate itself: each
``ctx`` call becomes a request to the ``Driver``, which

1. lets the tasks run until every one is blocked on a request or done (``settle``);
2. issues the new requests' commands in the order of their keys (activation id, branch
   position), never in the order they were made (``issue``);
3. waits with Restate's own combinator (``wait_completed``) until at least one command has
   completed, and hands the results over in key order (``wait``).

On replay Restate shows completions in the order they were journaled, so each round sees the
same completions as the first execution did, and the tasks issue the same commands again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import restate

Key = tuple[str, ...]
Make = Callable[[], Any]
"""Issues one Restate command; returns its durable future (or None for a command nobody awaits)."""



_UNKNOWN: Any = object()
"""A task's waiter where the loop's tasks do not expose it (not CPython's asyncio)."""
_QUIET = 3
"""Without waiters to look at: loop iterations without activity before the tasks count as settled
(a finished child wakes a parent waiting on it within two)."""
_SLEEP_DONE = getattr(asyncio.futures, "_set_result_unless_cancelled", None)
"""What the timer of an ``asyncio.sleep`` calls (CPython's asyncio)."""
"""Stands for a task's waiter where the loop's tasks do not expose it (not CPython's asyncio)."""


class Cancelled(Exception):
    """Restate cancelled the invocation (``restate invocations cancel``, the admin API)."""


class Driver:
    """Issues the Restate commands of one invocation's concurrent tasks in a deterministic order."""

    def __init__(self, ctx: restate.Context) -> None:
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self._new: list[tuple[Key, Make, asyncio.Future[Any]]] = []
        self._out: dict[Any, tuple[Key, asyncio.Future[Any]]] = {}
        self._abortable: set[asyncio.Future[Any]] = set()
        self._fired: set[asyncio.Future[Any]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._activity = 0
        self._woken = asyncio.Event()
        current = asyncio.current_task()
        self._exact = current is not None and hasattr(current, "_fut_waiter")

    # -- tasks ------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str, context: Any = None) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro, name=name, context=context)
        self.adopt(task)
        return task

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Count ``task`` among the ones that must settle (activations and their branches)."""
        self._tasks.add(task)
        self._activity += 1
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._activity += 1
        self._woken.set()

    @property
    def requested(self) -> bool:
        """Commands were requested since the last round, and the next ``issue`` will issue some
        (a request failed meanwhile is dropped there)."""
        return any(not fut.done() for _, _, fut in self._new)

    @property
    def busy(self) -> bool:
        """Tasks are alive or commands outstanding: the invocation is not done."""
        return bool(self._tasks or self._out or self._new)

    # -- requests ---------------------------------------------------------------------------

    def request(self, key: Key, make: Make, *, abortable: bool = False) -> asyncio.Future[Any]:
        """A command to issue at the next round, in ``key`` order; the future gets its result
        (or the ``restate.TerminalError`` it failed with). ``fail`` stops waiting on an
        ``abortable`` one (a timer, a promise) once issued; a step, once issued, runs to its end."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        if abortable:
            self._abortable.add(fut)
            fut.add_done_callback(self._abortable.discard)
        self._new.append((key, make, fut))
        self._activity += 1
        self._woken.set()
        return fut

    def fire(self, key: Key, make: Make) -> None:
        """A command whose result nobody awaits: issued in order like any other, never waited for
        (its completion wakes no round)."""
        self._fired.add(self.request(key, make))

    def cancel(self) -> None:
        """The invocation ends (suspended, failed, or done): stop every task still alive."""
        for task in list(self._tasks):
            task.cancel()

    def poke(self) -> None:
        """Something outside the tasks produced work for this round (a callback)."""
        self._activity += 1
        self._woken.set()

    def fail(self, prefix: str, exc: BaseException) -> None:
        """Fail the requests of an aborted activation (key ``(prefix, ...)``): those not issued
        yet, and the abortable ones outstanding."""
        for _, (key, fut) in list(self._out.items()):
            if key[0] == prefix and fut in self._abortable and not fut.done():
                fut.set_exception(exc)
        for key, _, fut in self._new:
            if key[0] == prefix and not fut.done():
                fut.set_exception(exc)

    # -- rounds -----------------------------------------------------------------------------

    async def settle(self) -> None:
        """Let the tasks run until each is blocked on a request, on another of these tasks, or
        done. A task in ``asyncio.sleep`` is waited for: its request must not be issued earlier
        or later than on replay."""
        quiet = 0
        while True:
            before = self._activity
            await asyncio.sleep(0)
            if self._activity != before:
                quiet = 0
                continue
            quiet += 1
            if not self._exact and quiet < _QUIET:
                continue  # tasks do not say what they wait on: a few idle iterations instead
            runnable, sleeping = self._blocked()
            if runnable:
                continue
            if not sleeping:
                return
            await asyncio.wait(sleeping)

    def _blocked(self) -> tuple[bool, set[asyncio.Future[Any]]]:
        """Whether a task is still runnable; else the futures of ``asyncio.sleep`` calls they wait on."""
        plain: set[asyncio.Future[Any]] = set()
        for task in self._tasks:
            # Runnable: scheduled (no waiter), woken (its waiter done, the wake-up queued), or
            # finished with its done callbacks still queued (they wake whoever waits on it).
            waiter: asyncio.Future[Any] | None = getattr(task, "_fut_waiter", _UNKNOWN)
            if waiter is _UNKNOWN:
                continue
            if waiter is None or waiter.done():
                return True, set()
            if type(waiter) is asyncio.Future:
                plain.add(waiter)
        if not plain:
            return False, set()
        timers = getattr(self.loop, "_scheduled", ())
        return False, {h._args[0] for h in timers  # asyncio keeps its timers there
                       if getattr(h, "_callback", None) is _SLEEP_DONE and h._args and h._args[0] in plain}

    def issue(self) -> int:
        """Issue the commands requested since the last round, in key order; returns how many."""
        if not self._new:
            return 0
        new = sorted(self._new, key=lambda r: r[0])
        self._new = []
        for key, make, fut in new:
            if fut.done():  # failed meanwhile (aborted): the same on replay, so nothing is issued
                continue
            durable = make()
            if durable is None or fut in self._fired:
                self._fired.discard(fut)
                fut.set_result(None)
            else:
                self._out[durable] = (key, fut)
        return len(new)

    async def wait(self) -> None:
        """Wait until Restate completes at least one outstanding command (or, with none
        outstanding, until a task does something); hand results over in key order."""
        if not self._out:
            if self._tasks and not self._new:
                self._woken.clear()
                await self._woken.wait()
            return
        try:
            done, _ = await restate.wait_completed(*self._out)
        except restate.TerminalError as exc:
            if exc.status_code == 409:
                raise Cancelled() from None
            raise
        for durable in sorted(done, key=lambda f: self._out[f][0]):
            ok, value = await _outcome(durable)  # completed: no waiting, just taking its value
            _, fut = self._out.pop(durable)
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)


async def _outcome(durable: Any) -> tuple[bool, Any]:
    try:
        return True, await durable
    except restate.TerminalError as exc:
        return False, exc
