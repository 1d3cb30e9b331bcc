"""DurableContext of the embedded runtime: replays journal entries, records new ones."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from ..._activation import Message, outgoing
from ..._codec import dumps, revive
from ...errors import NonDeterminismError
from .._base import DurableContext, RunAborted, State, StepInfo
from .._retry import RetryPolicy, seconds
from .._steps import return_type, run_with_retry

if TYPE_CHECKING:
    from ._runtime import LocalRuntime, _LiveRun

T = TypeVar("T")
_PROMISE_POLL = 0.25  # seconds; only while waiting on a promise another process may resolve


class LocalState(State):
    """A snapshot read on first use; writes are buffered and committed with the activation."""

    def __init__(self, runtime: LocalRuntime, agent: str, key: str) -> None:
        self._rt, self.agent, self.key = runtime, agent, key
        self._snapshot: dict[str, str] | None = None
        self.writes: dict[str, str | None] = {}

    def _load(self) -> dict[str, str]:
        if self._snapshot is None:
            self._snapshot = self._rt.journal.state(self.agent, self.key)
        return self._snapshot

    async def get(self, key: str, default: Any = None) -> Any:
        raw = self.writes[key] if key in self.writes else self._load().get(key)
        return default if raw is None else json.loads(raw)

    def set(self, key: str, value: Any) -> None:
        self.writes[key] = dumps(value, what=f"state {key!r} of agent {self.agent!r}")

    def clear(self, key: str) -> None:
        self.writes[key] = None

    async def keys(self) -> list[str]:
        live = {k for k in self._load() if k not in self.writes} | {k for k, v in self.writes.items() if v is not None}
        return sorted(k for k in live if not k.startswith("__roost."))


class LocalContext(DurableContext):
    def __init__(self, runtime: LocalRuntime, live: _LiveRun, msg: Message, key: str, replay: bool) -> None:
        self._rt = runtime
        self._live = live
        self.run_id = msg.run_id
        self.agent = msg.target
        self.activation_id = msg.id
        self.caused_by = msg.cause
        self._msg = msg
        self._state = LocalState(runtime, msg.target, key)
        self._entries = runtime.journal.entries(msg.run_id, msg.id) if replay else {}
        self._position = 0
        self.attempts = 1

    @property
    def state(self) -> LocalState:
        return self._state

    def _next(self, kind: str, name: str) -> tuple[int, tuple[str, str, str, str | None, int] | None]:
        pos = self._position
        self._position += 1
        entry = self._entries.get(pos)
        if entry is not None and (entry[0], entry[1]) != (kind, name):
            raise NonDeterminismError(
                run_id=self.run_id, agent=self.agent, position=pos,
                recorded=f"{entry[0]} {entry[1]!r}", requested=f"{kind} {name!r}",
            )
        return pos, entry

    def _row(self, pos: int, kind: str, name: str, status: str, value: str | None, attempts: int = 0,
             started: float | None = None) -> tuple[Any, ...]:
        return (self.run_id, self.activation_id, pos, kind, name, status, value, attempts, started, time.time())

    async def _wait_abortable(self, delay: float) -> None:
        if delay <= 0:
            return
        try:
            await asyncio.wait_for(self._live.aborted.wait(), delay)
        except TimeoutError:
            return
        raise RunAborted()

    async def step(self, name: str, fn: Callable[..., T] | Callable[..., Awaitable[T]], *args: Any,
                   retry: RetryPolicy | None = None, **kwargs: Any) -> T:
        pos, entry = self._next("step", name)
        rtype = return_type(fn)
        failed_before = 0
        if entry is not None:
            self.attempts = max(self.attempts, entry[4])
            if entry[2] == "done":
                return revive(json.loads(entry[3]) if entry[3] is not None else None, rtype)  # type: ignore[no-any-return]
            failed_before = entry[4]  # 'retrying': attempts that failed before a restart still count
        info = StepInfo(self.run_id, self.agent, name, 1, f"{self.run_id}/{self.activation_id}/{pos}")
        started = time.time()
        policy = retry or self._rt.app_for(self.run_id).specs[self.agent].retry

        def failed(attempt: int, exc: BaseException) -> None:
            error = json.dumps({"error_type": type(exc).__name__, "error_message": str(exc)})
            self._rt.journal.record(self._row(pos, "step", name, "retrying", error, attempt, started))

        result, attempts = await run_with_retry(fn, args, kwargs, policy=policy, info=info, wait=self._wait_abortable,
                                                first_attempt=failed_before + 1, on_retry=failed)
        self.attempts = max(self.attempts, attempts)
        encoded = dumps(result, what=f"run {self.run_id!r}, agent {self.agent!r}, step {name!r}")
        self._rt.journal.record(self._row(pos, "step", name, "done", encoded, attempts, started))
        return revive(json.loads(encoded), rtype)  # type: ignore[no-any-return]

    async def sleep(self, duration: float | timedelta) -> None:
        pos, entry = self._next("sleep", "sleep")
        if entry is None:
            wake = time.time() + seconds(duration)
            self._rt.journal.record(self._row(pos, "sleep", "sleep", "done", json.dumps(wake)))
        else:
            wake = float(json.loads(entry[3] or "0"))
        await self._wait_abortable(wake - time.time())

    async def now(self) -> datetime:
        pos, entry = self._next("now", "now")
        if entry is None:
            value = time.time()
            self._rt.journal.record(self._row(pos, "now", "now", "done", json.dumps(value)))
        else:
            value = float(json.loads(entry[3] or "0"))
        return datetime.fromtimestamp(value, tz=UTC)

    async def promise(self, name: str) -> Any:
        pos, entry = self._next("promise", name)
        return await self._await_promise(pos, "promise", name, entry)

    async def _await_promise(self, pos: int, kind: str, name: str, entry: tuple[Any, ...] | None) -> Any:
        if entry is not None and entry[2] == "done":
            return json.loads(entry[3])
        if entry is None:
            self._rt.journal.record(self._row(pos, kind, name, "waiting", None, started=time.time()))
        self._rt.emit("waiting", self.run_id, self.agent, name)  # also after a restart
        raw = await self._rt.wait_promise(self._live, name)
        self._rt.journal.finish_entry(self.run_id, self.activation_id, pos, raw)
        return json.loads(raw)

    def _message(self, agent: str, payload: Any, kind: str, pos: int, meta: dict[str, Any],
                 delay: float | timedelta | None) -> Message:
        at = time.time() + seconds(delay) if delay else None
        return outgoing(self._rt.app_for(self.run_id), self, agent, payload, kind=kind, position=pos, meta=meta,
                        deliver_at=at)

    async def send(self, agent: str, payload: Any, *, delay: float | timedelta | None = None) -> None:
        pos, entry = self._next("send", agent)
        if entry is not None:
            return
        msg = self._message(agent, payload, "send", pos, {}, delay)
        if self._rt.journal.send(msg, journal_row=self._row(pos, "send", agent, "done", json.dumps(msg.id))):
            self._rt.dispatch(msg)

    async def call(self, agent: str, payload: Any) -> Any:
        pos, entry = self._next("call", agent)
        reply = f"__reply:{self.activation_id}:{pos}"
        if entry is None:
            msg = self._message(agent, payload, "call", pos, {"reply_to": reply}, None)
            if self._rt.journal.send(msg, journal_row=self._row(pos, "call", agent, "waiting", None, started=time.time())):
                self._rt.dispatch(msg)
        if entry is not None and entry[2] == "done" and entry[3] is not None:
            raw = entry[3]
        else:
            raw = await self._rt.wait_promise(self._live, reply)
            self._rt.journal.finish_entry(self.run_id, self.activation_id, pos, raw)
        return revive(json.loads(raw), self._rt.app_for(self.run_id).specs[agent].output_type)
