"""DurableContext on Restate: every ``ctx`` call is a request to the invocation's Driver.

An activation runs inside an invocation (the run's workflow, or a keyed agent's Virtual
Object). Its ``ctx`` calls are named by their branch position (``runtime/_branches.py``) and
handed to the ``Driver``, which issues the Restate commands in a deterministic order. A step
runs in one ``ctx.run`` with its retries inside (``run_with_retry``, as on every runtime), so
its final outcome, success or failure, is what Restate journals.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic_core
import restate
from restate.exceptions import is_internal_exception
from restate.serde import Serde
from restate.server_context import DisconnectedException

from ..._activation import call_reply, message_body, outcome_of
from ..._codec import jsonable, revive
from ..._engine import Activation, ActivationFinished, MessageSent, Reply
from ...errors import CallCycleError, SerializationError, StepFailedError
from .._base import BufferedState, DurableContext, RunAborted, StepInfo
from .._branches import internal, position
from .._remote import failed_step_error, step_failure
from .._retry import RetryPolicy, checked_seconds
from .._steps import return_type, run_with_retry

if TYPE_CHECKING:
    from ._driver import Driver, Key

T = TypeVar("T")
_ATTEMPTS: dict[str, tuple[int, int]] = {}
"""Per step idempotency key, in this process: (attempts started, attempts failed). Restate runs a
step's ``ctx.run`` again when the invocation is retried (its server restarted, its connection
dropped); the numbering and the retry budget go on from where they were, as long as this
process lives (they restart if it dies)."""
class JsonSerde(Serde[Any]):
    """JSON through pydantic-core (Rust) for roost's own payloads: step outcomes, records, outputs."""

    def deserialize(self, buf: bytes) -> Any:
        return pydantic_core.from_json(buf) if buf else None

    def serialize(self, obj: Any) -> bytes:
        return b"" if obj is None else pydantic_core.to_json(obj)


JSON = JsonSerde()
_OPTIONS: restate.RunOptions[Any] = restate.RunOptions(serde=JSON)


def restate_signal(exc: BaseException) -> bool:
    """An exception by which the Restate SDK ends an invocation's attempt (not a failure of the run)."""
    return isinstance(exc, DisconnectedException) or is_internal_exception(exc)


class Host:
    """What an activation's context needs from the invocation running it."""

    app: Any
    run_id: str
    driver: Driver
    ctx: Any  # the Restate context of the invocation
    cancelling: bool = False
    """The run was cancelled: the async steps running are cancelled with it."""
    steps: set[asyncio.Task[Any]]
    """Async steps' attempts running in this process (their tasks)."""

    def cancel_steps(self) -> None:
        """Cancel the async steps running (each journals a 'cancelled' outcome)."""
        self.cancelling = True
        for task in list(self.steps):
            task.cancel()

    def aborted(self, activation: str) -> bool:
        raise NotImplementedError

    def sent(self, event: MessageSent) -> asyncio.Future[Reply] | None:
        """``ctx.send``/``ctx.call`` from an activation; for a call, the future of its reply."""
        raise NotImplementedError

    def waiting(self, name: str, on: bool) -> None:
        """The activation starts (``on``) or stops waiting on the promise ``name``."""

    def pause(self, activation: str, on: bool) -> None:
        """The activation waits on something slow (a timer, a promise, a reply): its slot is free."""

    def promise(self, name: str) -> Any:
        """The durable future of the run's promise ``name``."""
        raise NotImplementedError

    def promised(self, value: Any) -> Any:
        """The promise's value from what its durable future gave."""
        return value


class MemoryState(BufferedState):
    """State of an entity that lives inside the run (not ``keyed_by``): kept by the workflow in
    memory, rebuilt by replay; writes are buffered and applied when the activation completes."""

    def __init__(self, snapshot: dict[str, Any], agent: str) -> None:
        super().__init__(agent)
        self._snapshot = snapshot

    async def stored(self, key: str) -> str | None:
        value: str | None = self._snapshot.get(key)
        return value

    async def stored_keys(self) -> list[str]:
        return list(self._snapshot)


class ObjectState(BufferedState):
    """A keyed agent's state: its Virtual Object's state, read through the driver; writes are
    buffered and set when the activation completes (Restate commits them with the invocation)."""

    def __init__(self, ctx: RunContext, agent: str) -> None:
        super().__init__(agent)
        self._ctx = ctx

    async def stored(self, key: str) -> str | None:
        value: str | None = await self._ctx.ask("state", lambda: self._ctx.host.ctx.get(key, type_hint=str))
        return value

    async def stored_keys(self) -> list[str]:
        keys: list[str] = await self._ctx.ask("state", lambda: self._ctx.host.ctx.state_keys())
        return keys


class RunContext(DurableContext):
    """One activation's ``ctx`` inside a Restate invocation."""

    def __init__(self, host: Host, spec: Activation, key: str, state: MemoryState | None = None) -> None:
        self.host = host
        self.spec = spec
        self.run_id = host.run_id
        self.agent = spec.agent
        self.activation_id = spec.id
        self.caused_by = spec.cause
        self.key = key
        self._state: MemoryState | ObjectState = state if state is not None else ObjectState(self, spec.agent)
        self._thread = threading.get_ident()
        self.attempts = 1
        self.started: float | None = None
        self.finished: float | None = None
        self.steps: list[dict[str, Any]] = []
        """The activation's finished steps, for its record."""

    @property
    def state(self) -> MemoryState | ObjectState:
        return self._state

    def adopt_task(self, task: asyncio.Task[Any]) -> None:
        """A branch this activation's code started: the driver waits for it to settle too."""
        self.host.driver.adopt(task)

    def _position(self, call: str) -> str:
        return position(self, self._thread, run_id=self.run_id, agent=self.agent, call=call)

    async def ask(self, pos: str, make: Callable[[], Any], *, slow: bool = False) -> Any:
        """Have the driver issue a command for this activation and wait for its result."""
        if self.host.aborted(self.activation_id):
            raise RunAborted()
        key: Key = (self.activation_id, pos)
        fut = self.host.driver.request(key, make, abortable=slow)
        if slow:
            self.host.pause(self.activation_id, True)
        try:
            return await fut
        finally:
            if slow:
                self.host.pause(self.activation_id, False)

    async def step(self, name: str, fn: Callable[..., T] | Callable[..., Awaitable[T]], *args: Any,
                   retry: RetryPolicy | None = None, **kwargs: Any) -> T:
        pos = self._position("step")
        policy = retry or self.host.app.specs[self.agent].retry
        info = StepInfo(self.run_id, self.agent, name, 1, f"{self.run_id}/{self.activation_id}/{pos}",
                        self.activation_id, self.caused_by)
        where = f"run {self.run_id!r}, agent {self.agent!r}, step {name!r}"

        key = info.idempotency_key
        if inspect.iscoroutinefunction(fn):
            async def counted(*a: Any, **kw: Any) -> Any:
                _started(key)
                return await fn(*a, **kw)
        else:
            def counted(*a: Any, **kw: Any) -> Any:  # type: ignore[misc]
                _started(key)
                return fn(*a, **kw)

        def failed_attempt(attempt: int, exc: BaseException) -> None:
            started, failures = _ATTEMPTS.get(key, (attempt, 0))
            _ATTEMPTS[key] = (started, failures + 1)

        async def action() -> dict[str, Any]:
            # Runs until Restate has journaled its outcome; the retries happen inside, so the
            # outcome is final: a value, or the last failure after the policy gave up.
            t0 = time.time()
            started, failures = _ATTEMPTS.get(key, (0, 0))
            # An attempt abandoned when the invocation was retried counts in the numbering, not
            # in the budget: only failures do.
            budget = replace(policy, max_attempts=started + max(policy.max_attempts - failures, 0)) if started else policy
            try:
                attempts_of = run_with_retry(counted, args, kwargs, policy=budget, info=info, wait=_sleep,
                                             first_attempt=started + 1, on_retry=failed_attempt,
                                             traced=self.host.app.tracing)
                if not inspect.iscoroutinefunction(fn):  # a sync step cannot be stopped: it runs to its end
                    result, attempts = await attempts_of
                else:  # an async one is cancelled with the run: a task the run can cancel
                    with internal():  # roost's own task: not a branch of the activation's code
                        inner = asyncio.ensure_future(attempts_of)
                    self.host.steps.add(inner)
                    if self.host.cancelling:  # the run was cancelled before this attempt began
                        inner.cancel()
                    try:
                        result, attempts = await inner
                    except asyncio.CancelledError:
                        if not inner.cancelled() or not self.host.cancelling:
                            raise
                        return {"c": 1, "n": 1, "t0": t0, "t1": time.time()}
                    finally:
                        self.host.steps.discard(inner)
                return {"v": jsonable(result, what=where), "n": attempts, "t0": t0, "t1": time.time()}
            except StepFailedError as exc:
                return {"e": step_failure(exc.cause), "n": exc.attempts, "t0": t0, "t1": time.time()}
            except SerializationError as exc:
                return {"s": str(exc), "n": 1, "t0": t0, "t1": time.time()}
            finally:
                task = asyncio.current_task()
                if task is None or not task.cancelling():
                    _ATTEMPTS.pop(key, None)  # an outcome: Restate journals it (a cancelled attempt keeps counting)

        # The position is part of the journaled name: were commands ever issued in another order
        # on replay, Restate would report a mismatch instead of handing a step another's result.
        label = f"{name}@{self.activation_id}/{pos}"
        done: dict[str, Any] = await self.ask(pos, lambda: self.host.ctx.run_typed(label, action, _OPTIONS))
        if "c" in done:  # cancelled with the run
            raise RunAborted()
        self.attempts = max(self.attempts, int(done.get("n", 1)))
        self.started = done["t0"] if self.started is None else self.started
        self.finished = done["t1"]
        self.steps.append({"position": pos, "kind": "step", "name": name, "status": "done" if "v" in done else "failed",
                           "attempts": int(done.get("n", 1)), "started": done["t0"], "finished": done["t1"],
                           "value": done.get("v")})
        if "s" in done:
            raise SerializationError(done["s"])
        if "e" in done:
            raise StepFailedError(run_id=self.run_id, agent=self.agent, step=name, attempts=int(done["n"]),
                                  cause=failed_step_error(done["e"]))
        with internal():
            return revive(done["v"], return_type(fn))  # type: ignore[no-any-return]

    async def sleep(self, duration: float | timedelta) -> None:
        secs = checked_seconds(duration, what=f"run {self.run_id!r}, agent {self.agent!r}: ctx.sleep duration")
        pos = self._position("sleep")
        await self.ask(pos, lambda: self.host.ctx.sleep(timedelta(seconds=secs)), slow=True)

    async def now(self) -> datetime:
        value: float = await self.ask(self._position("now"), lambda: self.host.ctx.time())
        return datetime.fromtimestamp(value, tz=UTC)

    async def promise(self, name: str) -> Any:
        pos = self._position("promise")
        self.host.waiting(name, True)
        try:
            return self.host.promised(await self.ask(pos, lambda: self.host.promise(name), slow=True))
        finally:
            self.host.waiting(name, False)

    async def send(self, agent: str, payload: Any, *, delay: float | timedelta | None = None) -> None:
        secs = None if delay is None else checked_seconds(delay, what=f"run {self.run_id!r}: ctx.send delay to {agent!r}")
        pos = self._position("send")
        body = message_body(self.host.app, self, agent, payload)
        deliver_at = None
        if secs:
            deliver_at = float(await self.ask(pos + "/t", lambda: self.host.ctx.time())) + secs
        if self.host.aborted(self.activation_id):
            raise RunAborted()
        self.host.sent(MessageSent(self.activation_id, pos, agent, "send", body, deliver_at))

    async def call(self, agent: str, payload: Any) -> Any:
        chain = (*self.spec.call_chain, self.agent)
        if agent in chain:
            raise CallCycleError(
                f"run {self.run_id!r}: agent {self.agent!r} calls {agent!r}, which is waiting up the call chain "
                f"({' -> '.join((*chain, agent))}): the call would wait forever", run_id=self.run_id)
        pos = self._position("call")
        body = message_body(self.host.app, self, agent, payload)
        if self.host.aborted(self.activation_id):
            raise RunAborted()
        waiter = self.host.sent(MessageSent(self.activation_id, pos, agent, "call", body))
        assert waiter is not None
        self.host.pause(self.activation_id, True)
        try:
            reply: Reply = await waiter
        finally:
            self.host.pause(self.activation_id, False)
        return call_reply(self.host.app, self, agent, reply)


def _started(key: str) -> None:
    started, failures = _ATTEMPTS.get(key, (0, 0))
    _ATTEMPTS[key] = (started + 1, failures)


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def run_activation(ctx: RunContext, spec: Activation) -> ActivationFinished:
    """Run one activation's engine (``perform``); any failure, whatever raised it, becomes a
    failed activation naming run, agent, step and cause. A failed activation's record shows the
    attempts its error names (``ctx.attempts``)."""
    event = await outcome_of(ctx.host.app, ctx, spec, passes=is_internal_exception)
    if event.error is not None:
        ctx.attempts = event.error.attempts
    return event
