"""DurableContext on Restate: each call maps onto the Restate SDK's journaled operations."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import restate

from ..._activation import Message, entity_of
from ..._codec import dumps, revive
from ..._graph import CompiledApp
from ...errors import RetryableError, SerializationError, StepFailedError, TerminalError
from .._base import State, StepInfo
from .._engine_context import EngineContext, RemoteStepError
from .._retry import RetryPolicy, seconds
from .._steps import call_step, return_type
from ._errors import describe, to_restate
from ._names import ACTIVATE, agent_service, ledger_service

T = TypeVar("T")

# Attempts per step idempotency key, in this process: Restate retries a step in a new attempt
# of the invocation, so the count lives outside it (it restarts if the process dies).
_ATTEMPTS: dict[str, int] = {}


@functools.lru_cache(maxsize=64)
def _run_options(policy: RetryPolicy) -> restate.RunOptions[dict[str, Any]]:
    return restate.RunOptions(
        type_hint=dict,
        max_attempts=policy.max_attempts,
        initial_retry_interval=timedelta(seconds=policy.initial_interval),
        retry_interval_factor=policy.backoff,
        max_retry_interval=timedelta(seconds=policy.max_interval),
    )


class RestateState(State):
    """Virtual Object state of the agent's entity; Restate commits it with the invocation."""

    def __init__(self, ctx: restate.ObjectContext) -> None:
        self._ctx = ctx

    async def get(self, key: str, default: Any = None) -> Any:
        value = await self._ctx.get(key, type_hint=object)
        return default if value is None else value

    def set(self, key: str, value: Any) -> None:
        self._ctx.set(key, json.loads(dumps(value, what=f"state {key!r}")))

    def clear(self, key: str) -> None:
        self._ctx.clear(key)

    async def keys(self) -> list[str]:
        return sorted(k for k in await self._ctx.state_keys() if not k.startswith("__roost."))


def encode_message(msg: Message) -> bytes:
    return json.dumps({
        "id": msg.id, "run_id": msg.run_id, "target": msg.target, "kind": msg.kind, "payload": msg.payload,
        "cause": msg.cause, "meta": msg.meta,
    }).encode()


def decode_message(data: dict[str, Any]) -> Message:
    return Message(data["id"], data["run_id"], data["target"], data["kind"], data.get("payload"),
                   data.get("cause"), data.get("meta") or {})


class RestateContext(EngineContext):
    def __init__(self, ctx: restate.ObjectContext, app: CompiledApp, msg: Message, key: str) -> None:
        super().__init__(app, msg, key)
        self._ctx = ctx
        self._state = RestateState(ctx)

    @property
    def state(self) -> RestateState:
        return self._state

    async def step(self, name: str, fn: Callable[..., T] | Callable[..., Awaitable[T]], *args: Any,
                   retry: RetryPolicy | None = None, **kwargs: Any) -> T:
        policy, key = self._begin_step(retry)
        async def action() -> dict[str, Any]:
            # Runs only until Restate has journaled its result; the timings and attempt travel
            # with the result, so replays see the same values.
            attempt = _ATTEMPTS[key] = _ATTEMPTS.get(key, 0) + 1
            t0 = time.time()
            try:
                result = await call_step(fn, args, kwargs, StepInfo(self.run_id, self.agent, name, attempt, key))
                encoded = dumps(result, what=f"run {self.run_id!r}, agent {self.agent!r}, step {name!r}")
            except SerializationError as exc:
                raise to_restate(exc, attempt=attempt, retryable=False) from None
            except Exception as exc:
                retryable = policy.is_retryable(exc) and attempt < policy.max_attempts
                if retryable and isinstance(exc, RetryableError) and exc.retry_after:
                    # Restate 1.3 did not apply its delay override here; wait within the attempt.
                    await asyncio.sleep(exc.retry_after)
                raise to_restate(exc, attempt=attempt, retryable=policy.is_retryable(exc)) from exc
            _ATTEMPTS.pop(key, None)
            return {"v": json.loads(encoded), "t0": t0, "t1": time.time(), "n": attempt}

        try:
            done = await self._ctx.run_typed(name, action, _run_options(policy))
        except restate.TerminalError as exc:
            _ATTEMPTS.pop(key, None)
            info = describe(exc)
            attempts = int(info.get("attempt") or policy.max_attempts)
            self.attempts = max(self.attempts, attempts)
            cause = RemoteStepError(info.get("type", "Error"), info.get("message", ""))
            raise StepFailedError(run_id=self.run_id, agent=self.agent, step=name, attempts=attempts, cause=cause) from None
        self._record_step(done)
        return revive(done["v"], return_type(fn))  # type: ignore[no-any-return]

    async def sleep(self, duration: float | timedelta) -> None:
        await self._ctx.sleep(timedelta(seconds=seconds(duration)))

    async def now(self) -> datetime:
        return datetime.fromtimestamp(await self._ctx.time(), tz=UTC)

    async def promise(self, name: str) -> Any:
        awakeable_id, future = self._ctx.awakeable(type_hint=object)
        self._ctx.generic_send(ledger_service(self._app.name), "wait", json.dumps({"name": name, "awakeable": awakeable_id, "agent": self.agent,
                                                           "activation": self.activation_id}).encode(), key=self.run_id)
        return await future

    def deliver(self, msg: Message, key: str, delay: float | None = None) -> None:
        """One-way message to an agent's entity (what reacts_to compiles to)."""
        self._ctx.generic_send(agent_service(self._app.name, msg.target), ACTIVATE, encode_message(msg), key=key,
                               send_delay=timedelta(seconds=delay) if delay else None)

    async def send(self, agent: str, payload: Any, *, delay: float | timedelta | None = None) -> None:
        msg = self._message(agent, payload, "send")
        self.deliver(msg, entity_of(self._app, msg), seconds(delay) if delay else None)
        self.produced.append(msg.id)  # only once sent: the ledger waits for every id it is told of

    async def call(self, agent: str, payload: Any) -> Any:
        msg = self._message(agent, payload, "call")
        spec = self._app.specs[agent]
        key = entity_of(self._app, msg)
        self.produced.append(msg.id)
        try:
            raw = await self._ctx.generic_call(agent_service(self._app.name, agent), ACTIVATE, encode_message(msg),
                                               key=key)
        except restate.TerminalError as exc:  # the callee failed: a roost error for the caller
            raise TerminalError(f"run {self.run_id!r}: call from {self.agent!r} to agent {agent!r} failed: "
                                f"{exc.message}") from None
        return revive(json.loads(raw)["output"], spec.output_type)
