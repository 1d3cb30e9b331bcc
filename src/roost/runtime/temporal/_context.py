"""DurableContext on Temporal: runs inside roost's workflow, so every call is workflow code.

Steps become activities (or local activities, see ``_activities``), sleeps become workflow
timers, promises wait on values set by the run's ``resolve`` update, and messages are events of
the run engine, which the run workflow drives.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

from ..._activation import message_body
from ..._codec import dumps, revive
from ..._engine import Activation, MessageSent, Reply
from ..._graph import CompiledApp
from ...errors import CallCycleError, CallFailedError, SerializationError, StepFailedError
from .._base import DurableContext, RunAborted, State
from .._branches import internal, position
from .._remote import RemoteStepError, failed_step_error, remote_error
from .._retry import RetryPolicy, checked_seconds
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


class TemporalContext(DurableContext):
    """One activation's ``ctx`` inside the run workflow: every call is workflow code."""

    def __init__(self, run: RunWorkflow, app: CompiledApp, spec: Activation, key: str, state: dict[str, Any]) -> None:
        self._run = run
        self._app = app
        self.spec = spec
        self.run_id = str(run.run["run_id"])
        self.agent = spec.agent
        self.activation_id = spec.id
        self.caused_by = spec.cause
        self.key = key
        self._state = TemporalState(state)
        self.steps: list[dict[str, Any]] = []
        self.attempts = 1
        self.started: float | None = None
        self.finished: float | None = None

    @property
    def state(self) -> TemporalState:
        return self._state

    def _next(self, call: str = "step") -> str:
        """The next position in the activation, named by its branch (``runtime/_branches.py``)."""
        return position(self, threading.get_ident(), run_id=self.run_id, agent=self.agent, call=call)

    def _check(self) -> None:
        if self._run.aborted_(self.activation_id):
            raise RunAborted()

    async def step(self, name: str, fn: Callable[..., T] | Callable[..., Awaitable[T]], *args: Any,
                   retry: RetryPolicy | None = None, **kwargs: Any) -> T:
        self._check()
        pos = self._next()
        policy = retry or self._app.specs[self.agent].retry
        key = f"{self.run_id}/{self.activation_id}/{pos}"
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
                # Steps of one kind requested together (the items of a fan-out) share activities.
                done = await self._run.step(activity_type(self.agent, name), policy, req)
                if "e" in done:
                    raise self._step_failed(pos, name, int(done["n"]), failed_step_error(done["e"]), done)
                if "s" in done:
                    raise StepFailedError(run_id=self.run_id, agent=self.agent, step=name, attempts=int(done["n"]),
                                          cause=SerializationError(done["s"]))
            else:
                done = await workflow.execute_local_activity(
                    activity_type(self.agent, name), req, result_type=dict, start_to_close_timeout=LOCAL_STEP_TIMEOUT,
                    retry_policy=temporal_retry(policy))
        except (ActivityError, ApplicationError) as exc:  # a local activity's failure comes unwrapped
            raise self._failed(pos, name, policy, exc) from None
        finally:
            if token is not None:
                LOCAL.pop(token, None)
        self.attempts = max(self.attempts, int(done.get("n", 1)))
        self.started = done["t0"] if self.started is None else self.started
        self.finished = done["t1"]
        self.steps.append({"position": pos, "kind": "step", "name": name, "status": "done",
                           "attempts": int(done.get("n", 1)), "started": done["t0"], "finished": done["t1"],
                           "value": done["v"]})
        with internal():
            return revive(done["v"], return_type(fn))  # type: ignore[no-any-return]

    def _failed(self, pos: str, name: str, policy: RetryPolicy,
                exc: ActivityError | ApplicationError) -> StepFailedError:
        cause = exc.cause if isinstance(exc, ActivityError) else exc
        attempts = policy.max_attempts
        if isinstance(cause, ApplicationError):
            details = cause.details[0] if cause.details else {}
            attempts = int(details.get("attempt", attempts)) if isinstance(details, dict) else attempts
            if cause.type == "SerializationError":
                return StepFailedError(run_id=self.run_id, agent=self.agent, step=name, attempts=attempts,
                                       cause=SerializationError(cause.message))
            tb = details.get("traceback") if isinstance(details, dict) else None
            error: Exception = remote_error(cause.type or "Error")(cause.type or "Error", cause.message, tb)
        elif isinstance(cause, TemporalTimeoutError):
            error = RemoteStepError("TimeoutError", f"the step timed out ({cause.type.name if cause.type else 'timeout'})")
        else:
            error = RemoteStepError(type(cause).__name__ if cause else "Error", str(cause or exc))
        return self._step_failed(pos, name, attempts, error)

    def _step_failed(self, pos: str, name: str, attempts: int, cause: BaseException,
                     done: dict[str, Any] | None = None) -> StepFailedError:
        """A step failed for good: its record shows the attempts the error names."""
        self.attempts = max(self.attempts, attempts)
        now = workflow.now().timestamp()
        self.steps.append({"position": pos, "kind": "step", "name": name, "status": "failed", "attempts": attempts,
                           "started": (done or {}).get("t0", now), "finished": (done or {}).get("t1", now),
                           "value": None})
        return StepFailedError(run_id=self.run_id, agent=self.agent, step=name, attempts=attempts, cause=cause)

    async def sleep(self, duration: float | timedelta) -> None:
        secs = checked_seconds(duration, what=f"run {self.run_id!r}, agent {self.agent!r}: ctx.sleep duration")
        self._check()
        self._next("sleep")
        await self._run.wait(self.activation_id, None, max(secs, 0.001))

    async def now(self) -> datetime:
        self._next("now")
        return workflow.now()

    async def promise(self, name: str) -> Any:
        self._check()
        self._next("promise")
        return await self._run.wait_promise(name, self.agent, self.activation_id)

    async def send(self, agent: str, payload: Any, *, delay: float | timedelta | None = None) -> None:
        secs = None if delay is None else checked_seconds(delay, what=f"run {self.run_id!r}: ctx.send delay to {agent!r}")
        self._check()
        pos = self._next("send")
        body = message_body(self._app, self, agent, payload)
        deliver_at = workflow.now().timestamp() + secs if secs else None
        self._run.sent(MessageSent(self.activation_id, pos, agent, "send", body, deliver_at))

    async def call(self, agent: str, payload: Any) -> Any:
        chain = (*self.spec.call_chain, self.agent)
        if agent in chain:
            raise CallCycleError(
                f"run {self.run_id!r}: agent {self.agent!r} calls {agent!r}, which is waiting up the call chain "
                f"({' -> '.join((*chain, agent))}): the call would wait forever", run_id=self.run_id)
        self._check()
        pos = self._next("call")
        body = message_body(self._app, self, agent, payload)
        waiter = self._run.sent(MessageSent(self.activation_id, pos, agent, "call", body))
        assert waiter is not None
        self._run.pause(True)
        try:
            reply: Reply = await waiter
        finally:
            self._run.pause(False)
        if reply.status == "cancelled":
            raise RunAborted()
        if reply.status != "completed":
            cause = f": {reply.error.error_type}: {reply.error.error_message}" if reply.error else ""
            raise CallFailedError(f"run {self.run_id!r}: ctx.call from {self.agent!r} to {agent!r}: the callee was "
                                  f"{reply.status}{cause}", run_id=self.run_id, callee=agent, status=reply.status)
        with internal():
            return revive(reply.output, self._app.specs[agent].output_type)
