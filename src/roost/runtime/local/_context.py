"""DurableContext of the embedded runtime: replays journal entries, records new ones.

Each ``ctx`` call is named by its branch position (``runtime/_branches.py``), so concurrent
branches of one activation each get their own entries back on replay. Writes go through the
runtime's group commit and are awaited: nothing continues on a write a crash could lose.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from ..._activation import call_reply, message_body
from ..._codec import dumps, revive
from ..._engine import Activation, MessageSent
from ...engines.function import FunctionEngine
from ...errors import CallCycleError, NonDeterminismError, StepFailedError
from .._base import BufferedState, DurableContext, RunAborted, StepInfo
from .._branches import internal, position
from .._remote import failed_step_error, step_failure
from .._retry import RetryPolicy, checked_seconds
from .._steps import Detached, return_type, run_with_retry
from ._journal import Journal

if TYPE_CHECKING:
    from ._runtime import LocalRuntime, _LiveRun

T = TypeVar("T")
Entry = tuple[str, str, str, str | None, int]


class LocalState(BufferedState):
    """A snapshot read on first use; writes are buffered and committed with the activation."""

    def __init__(self, runtime: LocalRuntime, agent: str, key: str) -> None:
        super().__init__(agent)
        self._rt, self.key = runtime, key
        self._snapshot: dict[str, str] | None = None

    def _load(self) -> dict[str, str]:
        if self._snapshot is None:
            self._snapshot = self._rt.journal.state(self.agent, self.key)
        return self._snapshot

    async def stored(self, key: str) -> str | None:
        return self._load().get(key)

    async def stored_keys(self) -> list[str]:
        return list(self._load())


class LocalContext(DurableContext):
    def __init__(self, runtime: LocalRuntime, live: _LiveRun, spec: Activation, key: str,
                 entries: dict[str, Entry]) -> None:
        self._rt = runtime
        self._live = live
        self._spec = spec
        self.run_id = live.run_id
        self.agent = spec.agent
        self.activation_id = spec.id
        self.caused_by = spec.cause
        self._state = LocalState(runtime, spec.agent, key)
        self._entries = entries
        self._thread = threading.get_ident()
        self.attempts = 1
        engine = live.app.specs[spec.agent].engine
        self._one_step = isinstance(engine, FunctionEngine) and not engine.takes_ctx
        self.deferred: list[Callable[[Any], Any]] = []
        """Writes committed with the activation's outcome instead of on their own (see ``step``)."""

    @property
    def state(self) -> LocalState:
        return self._state

    def _next(self, kind: str, name: str) -> tuple[str, Entry | None]:
        pos = position(self, self._thread, run_id=self.run_id, agent=self.agent, call=kind)
        entry = self._entries.get(pos)
        if entry is not None and (entry[0], entry[1]) != (kind, name):
            raise NonDeterminismError(
                run_id=self.run_id, agent=self.agent, position=int(pos) if pos.isdigit() else -1,
                recorded=f"{entry[0]} {entry[1]!r} (at {pos})", requested=f"{kind} {name!r}",
            )
        return pos, entry

    def _row(self, pos: str, kind: str, name: str, status: str, value: str | None, attempts: int = 0,
             started: float | None = None) -> tuple[Any, ...]:
        return (self.run_id, self.activation_id, pos, kind, name, status, value, attempts, started, time.time())

    async def _record(self, row: tuple[Any, ...]) -> None:
        await self._write(lambda db: Journal.record(db, row))

    async def _write(self, op: Callable[[Any], Any]) -> None:
        await self._rt.write_for(self._live, self.agent, op)

    async def _wait_abortable(self, delay: float) -> None:
        if delay <= 0:
            return
        await self._rt.wait_abortable(self._live, None, delay)

    async def step(self, name: str, fn: Callable[..., T] | Callable[..., Awaitable[T]], *args: Any,
                   retry: RetryPolicy | None = None, **kwargs: Any) -> T:
        pos, entry = self._next("step", name)
        if self._live.engine.ending and (entry is None or entry[2] != "done"):
            raise RunAborted()  # the run is being cancelled or failed: nothing new starts
        rtype = return_type(fn)
        failed_before = 0
        if entry is not None:
            self.attempts = max(self.attempts, entry[4])
            if entry[2] == "done":
                return revive(json.loads(entry[3]) if entry[3] is not None else None, rtype)  # type: ignore[no-any-return]
            if entry[2] == "failed":  # it failed for good: replay raises the same failure, never runs it again
                recorded = json.loads(entry[3] or "{}")
                cause = failed_step_error([recorded.get("error_type", "Error"), recorded.get("error_message", ""),
                                           recorded.get("traceback")])
                raise StepFailedError(run_id=self.run_id, agent=self.agent, step=name, attempts=entry[4], cause=cause)
            failed_before = entry[4]  # 'retrying': attempts that failed before a restart still count
        info = StepInfo(self.run_id, self.agent, name, 1, f"{self.run_id}/{self.activation_id}/{pos}",
                        self.activation_id, self.caused_by)
        started = time.time()
        policy = retry or self._live.app.specs[self.agent].retry
        where = f"run {self.run_id!r}, agent {self.agent!r}, step {name!r}"

        retrying: list[asyncio.Future[Any]] = []

        def failed(attempt: int, exc: BaseException) -> None:
            error = json.dumps({"error_type": type(exc).__name__, "error_message": str(exc)})
            row = self._row(pos, "step", name, "retrying", error, attempt, started)
            retrying.append(self._rt.write_soon(lambda db: Journal.record(db, row)))

        async def back_off(delay: float) -> None:
            # The failed attempt is durable before the back-off: a kill meanwhile still counts it.
            while retrying:
                with contextlib.suppress(Exception):
                    await retrying.pop()
            await self._wait_abortable(delay)

        what = f"step {name!r} of agent {self.agent!r}"

        def detached(attempt: int) -> Detached:
            def detach(cf: concurrent.futures.Future[Any]) -> None:
                # The activation stops (a timeout, a closed runtime, Ctrl-C) while the attempt runs:
                # it is journaled when it returns, and its run stays this process's until then.
                self._rt.detached_steps.add(self.run_id, what, cf, lambda result: self._row(
                    pos, "step", name, "done", dumps(result, what=where), attempt, started))
            return detach

        try:
            attempts_of = run_with_retry(fn, args, kwargs, policy=policy, info=info, wait=back_off,
                                         first_attempt=failed_before + 1, on_retry=failed, on_detached=detached,
                                         traced=self._live.app.tracing)
            if inspect.iscoroutinefunction(fn):
                result, attempts = await self._cancellable(attempts_of)
            else:  # a sync step cannot be stopped: a cancelled run still journals it when it finishes
                self._rt.sync_steps[info.idempotency_key] = (self.run_id, what)
                try:
                    result, attempts = await attempts_of
                finally:
                    self._rt.sync_steps.pop(info.idempotency_key, None)
        except StepFailedError as exc:
            # The step's record shows the attempts the error names (the last one included).
            self.attempts = max(self.attempts, exc.attempts)
            kind, message, tb = step_failure(exc.cause)
            failure = json.dumps({"error_type": kind, "error_message": message, "traceback": tb})
            await self._keep(self._row(pos, "step", name, "failed", failure, exc.attempts, started))
            raise
        self.attempts = max(self.attempts, attempts)
        encoded = dumps(result, what=where)
        await self._keep(self._row(pos, "step", name, "done", encoded, attempts, started))
        return revive(json.loads(encoded), rtype)  # type: ignore[no-any-return]

    async def _cancellable(self, attempts: Coroutine[Any, Any, tuple[Any, int]]) -> tuple[Any, int]:
        """An async step's attempts, as a task the runtime cancels when the run is cancelled
        (the step then raises RunAborted: the activation ends cancelled)."""
        with internal():  # roost's own task: not a branch of the activation's code
            task = asyncio.ensure_future(attempts)
        self._live.steps.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                task.cancel()  # the activation itself is being stopped (the runtime closes)
                raise
            raise RunAborted() from None
        finally:
            self._live.steps.discard(task)

    async def _keep(self, row: tuple[Any, ...]) -> None:
        """Journal a step's outcome."""
        if self._one_step:
            # A plain function's one step: nothing happens between it and the activation's outcome,
            # so its outcome is committed in the same transaction (one commit per activation).
            self.deferred.append(lambda db: Journal.record(db, row))
        else:
            await self._record(row)

    async def sleep(self, duration: float | timedelta) -> None:
        secs = checked_seconds(duration, what=f"run {self.run_id!r}, agent {self.agent!r}: ctx.sleep duration")
        pos, entry = self._next("sleep", "sleep")
        if entry is None:
            wake = time.time() + secs
            await self._record(self._row(pos, "sleep", "sleep", "done", json.dumps(wake)))
        else:
            wake = float(json.loads(entry[3] or "0"))
        await self._wait_abortable(wake - time.time())

    async def now(self) -> datetime:
        pos, entry = self._next("now", "now")
        if entry is None:
            value = time.time()
            await self._record(self._row(pos, "now", "now", "done", json.dumps(value)))
        else:
            value = float(json.loads(entry[3] or "0"))
        return datetime.fromtimestamp(value, tz=UTC)

    async def promise(self, name: str) -> Any:
        pos, entry = self._next("promise", name)
        if entry is not None and entry[2] == "done":
            return json.loads(entry[3]) if entry[3] is not None else None
        if entry is None:
            await self._record(self._row(pos, "promise", name, "waiting", None, started=time.time()))
        self._rt.emit("waiting", self.run_id, self.agent, name)  # also after a restart
        value = await self._rt.wait_promise(self._live, name)
        raw = json.dumps(value)
        await self._write(lambda db: Journal.finish_entry(db, self.run_id, self.activation_id, pos, raw))
        return value

    async def send(self, agent: str, payload: Any, *, delay: float | timedelta | None = None) -> None:
        secs = None if delay is None else checked_seconds(delay, what=f"run {self.run_id!r}: ctx.send delay to {agent!r}")
        pos, entry = self._next("send", agent)
        if entry is not None:
            return
        body = message_body(self._live.app, self, agent, payload)
        event = MessageSent(self.activation_id, pos, agent, "send", body, time.time() + secs if secs else None)
        row = self._row(pos, "send", agent, "done", json.dumps(event.position))
        await self._rt.apply(self._live, event, [lambda db: Journal.record(db, row)])
        if self._live.broken is not None:
            raise RunAborted()

    async def call(self, agent: str, payload: Any) -> Any:
        chain = (*self._spec.call_chain, self.agent)
        if agent in chain:
            raise CallCycleError(
                f"run {self.run_id!r}: agent {self.agent!r} calls {agent!r}, which is waiting up the call chain "
                f"({' -> '.join((*chain, agent))}): the call would wait forever", run_id=self.run_id)
        pos, entry = self._next("call", agent)
        key = f"{self.activation_id}/{pos}"
        if entry is None:
            body = message_body(self._live.app, self, agent, payload)
            row = self._row(pos, "call", agent, "waiting", None, started=time.time())
            await self._rt.apply(self._live, MessageSent(self.activation_id, pos, agent, "call", body),
                                 [lambda db: Journal.record(db, row)])
            if self._live.broken is not None:
                raise RunAborted()
        reply = await self._rt.wait_reply(self._live, key)
        if entry is None or entry[2] != "done":
            raw = json.dumps(reply.output)
            await self._write(lambda db: Journal.finish_entry(db, self.run_id, self.activation_id, pos, raw))
        return call_reply(self._live.app, self, agent, reply)
