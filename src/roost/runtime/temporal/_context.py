"""DurableContext on Temporal: runs inside roost's workflow, so every call is workflow code.

Steps become activities (or local activities, see ``_activities``), sleeps become workflow
timers, promises wait on values set by the run's ``resolve`` update, and messages are
delivered by the run workflow itself.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

from ..._activation import Message, entity_of
from ..._codec import dumps, revive
from ..._graph import CompiledApp
from ...errors import SerializationError, StepFailedError
from .._base import State
from .._engine_context import EngineContext, RemoteStepError
from .._retry import RetryPolicy, seconds
from .._steps import return_type
from ._activities import LOCAL, LOCAL_KEY, step_ref
from ._names import activity_type

if TYPE_CHECKING:
    from ._workflow import RunWorkflow

T = TypeVar("T")

STEP_TIMEOUT = timedelta(hours=1)
"""Longest a single attempt of a step may run (its start-to-close timeout)."""
HEARTBEAT_TIMEOUT = timedelta(seconds=2)
"""A step whose worker stopped heartbeating this long ago is tried again (on any worker)."""
LOCAL_STEP_TIMEOUT = timedelta(minutes=10)


def temporal_retry(policy: RetryPolicy) -> TemporalRetryPolicy:
    initial = max(policy.initial_interval, 0.001)
    return TemporalRetryPolicy(
        initial_interval=timedelta(seconds=initial), backoff_coefficient=max(policy.backoff, 1.0),
        maximum_interval=timedelta(seconds=max(policy.max_interval, initial)), maximum_attempts=policy.max_attempts,
    )


class TemporalState(State):
    """A working copy of the entity's state, written back when the activation succeeds."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = copy.deepcopy(data)

    async def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else copy.deepcopy(value)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = json.loads(dumps(value, what=f"state {key!r}"))

    def clear(self, key: str) -> None:
        self.data.pop(key, None)

    async def keys(self) -> list[str]:
        return sorted(k for k in self.data if not k.startswith("__roost."))


class TemporalContext(EngineContext):
    def __init__(self, run: RunWorkflow, app: CompiledApp, msg: Message, key: str, state: dict[str, Any]) -> None:
        super().__init__(app, msg, key)
        self._run = run
        self._state = TemporalState(state)

    @property
    def state(self) -> TemporalState:
        return self._state

    async def step(self, name: str, fn: Callable[..., T] | Callable[..., Awaitable[T]], *args: Any,
                   retry: RetryPolicy | None = None, **kwargs: Any) -> T:
        policy, key = self._begin_step(retry)
        req: dict[str, Any] = {
            "app": self._app.name, "agent": self.agent, "step": name, "run_id": self.run_id, "key": key,
            "non_retryable": [f"{t.__module__}.{t.__qualname__}" for t in policy.non_retryable],
        }
        ref = step_ref(self._app, self.agent, fn)
        token = None
        if ref is not None:
            what = f"run {self.run_id!r}, agent {self.agent!r}, step {name!r}: the arguments"
            req.update(ref=ref, args=json.loads(dumps(list(args), what=what)), kwargs=json.loads(dumps(kwargs, what=what)))
        else:
            token = req[LOCAL_KEY] = f"{workflow.info().run_id}/{key}"
            LOCAL[token] = (fn, args, kwargs)
        try:
            if token is None:
                done = await workflow.execute_activity(
                    activity_type(self.agent, name), req, result_type=dict, start_to_close_timeout=STEP_TIMEOUT,
                    heartbeat_timeout=HEARTBEAT_TIMEOUT, retry_policy=temporal_retry(policy))
            else:
                done = await workflow.execute_local_activity(
                    activity_type(self.agent, name), req, result_type=dict, start_to_close_timeout=LOCAL_STEP_TIMEOUT,
                    retry_policy=temporal_retry(policy))
        except ActivityError as exc:
            raise self._failed(name, policy, exc) from None
        finally:
            if token is not None:
                LOCAL.pop(token, None)
        self._record_step(done)
        return revive(done["v"], return_type(fn))  # type: ignore[no-any-return]

    def _failed(self, name: str, policy: RetryPolicy, exc: ActivityError) -> StepFailedError:
        cause = exc.cause
        attempts = policy.max_attempts
        if isinstance(cause, ApplicationError):
            details = cause.details[0] if cause.details else {}
            attempts = int(details.get("attempt", attempts)) if isinstance(details, dict) else attempts
            if cause.type == "SerializationError":
                return StepFailedError(run_id=self.run_id, agent=self.agent, step=name, attempts=attempts,
                                       cause=SerializationError(cause.message))
            error: Exception = RemoteStepError(cause.type or "Error", cause.message)
        elif isinstance(cause, TemporalTimeoutError):
            error = RemoteStepError("TimeoutError", f"the step timed out ({cause.type.name if cause.type else 'timeout'})")
        else:
            error = RemoteStepError(type(cause).__name__ if cause else "Error", str(cause or exc))
        self.attempts = max(self.attempts, attempts)
        return StepFailedError(run_id=self.run_id, agent=self.agent, step=name, attempts=attempts, cause=error)

    async def sleep(self, duration: float | timedelta) -> None:
        await workflow.sleep(max(seconds(duration), 0.001))

    async def now(self) -> datetime:
        return workflow.now()

    async def promise(self, name: str) -> Any:
        return await self._run.wait_promise(name, self.agent, self.activation_id)

    async def send(self, agent: str, payload: Any, *, delay: float | timedelta | None = None) -> None:
        msg = self._message(agent, payload, "send")
        self._run.deliver(msg, entity_of(self._app, msg), seconds(delay) if delay else None)
        self.produced.append(msg.id)

    async def call(self, agent: str, payload: Any) -> Any:
        msg = self._message(agent, payload, "call")
        self.produced.append(msg.id)
        output = await self._run.call(msg, entity_of(self._app, msg), caller=self.agent)
        return revive(output, self._app.specs[agent].output_type)
