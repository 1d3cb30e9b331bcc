"""DurableContext on Temporal: runs inside roost's workflow, so every call is workflow code.

Steps become activities (see ``_activities``), sleeps become workflow
timers, promises wait on values set by the run's ``resolve`` update, and messages are events of
the run engine, which the run workflow drives.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutType
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

from ..._activation import call_reply, message_body
from ..._codec import dumps, revive
from ..._engine import Activation, ErrorInfo, MessageSent, Reply
from ..._graph import CompiledApp
from ...errors import CallCycleError, NonDeterminismError, SerializationError, StepFailedError
from .._base import DurableContext, RunAborted, State
from .._branches import internal, position
from .._remote import RemoteStepError, failed_step_error, remote_error
from .._retry import RetryPolicy, checked_seconds
from .._steps import return_type
from ._activities import LOCAL, LOCAL_KEY, MOVED, PROCESS_QUEUES, step_ref
from ._names import activity_type

if TYPE_CHECKING:
    from ._workflow import RunWorkflow

T = TypeVar("T")

STEP_TIMEOUT = timedelta(hours=1)
"""Longest a single attempt of a step may run (its start-to-close timeout)."""
HEARTBEAT_TIMEOUT = timedelta(seconds=2)
"""A step whose worker stopped heartbeating this long ago is tried again (on any worker)."""
PICKUP_TIMEOUT = timedelta(seconds=10)
"""How long a step whose function only one process holds (a lambda, a closure) waits on that
process's task queue before the workflow schedules it again on its own process's queue: the time
roost takes to notice that the process holding it is gone."""
MOVES = 20
"""Times such a step is scheduled again before it fails (each time, a process that held it was gone)."""


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
        self.journal: dict[str, dict[str, Any]] = run.journal(spec.id)
        """What this activation's ctx calls returned, by position, for a run continued as new."""
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
        entry = self._replay(pos, "step", name)
        if entry is None:
            try:
                done = await self._run_step(pos, name, fn, args, kwargs, retry)
            except StepFailedError as exc:
                cause = exc.cause
                self.journal[pos] = {"op": "step", "name": name, "failed": [
                    getattr(cause, "kind", type(cause).__name__), str(cause), exc.attempts,
                    isinstance(cause, SerializationError), getattr(cause, "user_traceback", None)]}
                raise
            self.journal[pos] = entry = {"op": "step", "name": name, "done": done}
        elif "failed" in entry:
            kind, message, attempts, serialization, tb = entry["failed"]
            error = SerializationError(message) if serialization else remote_error(kind)(kind, message, tb)
            raise self._step_failed(pos, name, int(attempts), error)
        done = entry["done"]
        self.attempts = max(self.attempts, int(done.get("n", 1)))
        self.started = done["t0"] if self.started is None else self.started
        self.finished = done["t1"]
        self.steps.append({"position": pos, "kind": "step", "name": name, "status": "done",
                           "attempts": int(done.get("n", 1)), "started": done["t0"], "finished": done["t1"],
                           "value": done["v"]})
        with internal():
            return revive(done["v"], return_type(fn))  # type: ignore[no-any-return]

    def _replay(self, pos: str, op: str, name: str | None = None) -> dict[str, Any] | None:
        """What the run before a continue-as-new journaled at ``pos`` (see ``_continue``), checked
        to be the same call: None when it had not got that far."""
        entry = self.journal.get(pos)
        if entry is not None and (entry["op"], entry.get("name")) != (op, name):
            raise NonDeterminismError(run_id=self.run_id, agent=self.agent, position=pos,
                                      recorded=f"{entry['op']} {entry.get('name') or ''}".strip(),
                                      requested=f"{op} {name or ''}".strip())
        return entry

    async def _run_step(self, pos: str, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                        kwargs: dict[str, Any], retry: RetryPolicy | None) -> dict[str, Any]:
        """Run a step as an activity: its outcome (value and timings), or StepFailedError."""
        policy = retry or self._app.specs[self.agent].retry
        key = f"{self.run_id}/{self.activation_id}/{pos}"
        req: dict[str, Any] = {
            "app": self._app.name, "agent": self.agent, "step": name, "run_id": self.run_id, "key": key,
            "activation": self.activation_id, "cause": self.caused_by, "traced": self._app.tracing,
            "non_retryable": [f"{t.__module__}.{t.__qualname__}" for t in policy.non_retryable],
        }
        if inspect.iscoroutinefunction(fn):
            req["cancellable"] = True  # cancelled with the run (a sync step finishes and is recorded)
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
                with internal():  # roost's own task: not a branch of the activation's code
                    held = asyncio.get_running_loop().create_task(
                        self._held(activity_type(self.agent, name), policy, req))
                if req.get("cancellable"):
                    self._run.cancellable.add(held)
                    held.add_done_callback(self._run.cancellable.discard)
                done = await held
        except ActivityError as exc:
            raise self._failed(pos, name, policy, exc) from None
        except asyncio.CancelledError:
            if self._run.cancelling:
                raise RunAborted() from None  # the run was cancelled: its async step with it
            raise
        finally:
            if token is not None:
                LOCAL.pop(token, None)
        return done

    async def _held(self, atype: str, policy: RetryPolicy, req: dict[str, Any]) -> dict[str, Any]:
        """A step whose function only this process holds: a real activity on this process's own
        task queue (its outcome is in the history once it finished, as for any activity). If the
        process that held it is gone (the step waited past PICKUP_TIMEOUT, or a process without it
        took it), it is scheduled again on the queue of the process running the workflow now."""
        moves = 0
        while True:
            # Temporal's replay checks an activity's id and type, not its task queue.
            queue = PROCESS_QUEUES.get(workflow.info().task_queue, workflow.info().task_queue)
            try:
                async with self._run.io():
                    done: dict[str, Any] = await workflow.execute_activity(
                        atype, req, result_type=dict, task_queue=queue, start_to_close_timeout=STEP_TIMEOUT,
                        schedule_to_start_timeout=PICKUP_TIMEOUT, heartbeat_timeout=HEARTBEAT_TIMEOUT,
                        retry_policy=temporal_retry(policy))
                return done
            except ActivityError as exc:
                cause = exc.cause
                moved = (isinstance(cause, TemporalTimeoutError) and cause.type == TimeoutType.SCHEDULE_TO_START) or (
                    isinstance(cause, ApplicationError) and cause.type == MOVED)
                moves += 1
                if not moved or moves > MOVES:
                    raise

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
        pos = self._next("sleep")
        entry = self._replay(pos, "sleep")
        if entry is None:  # journaled when it starts: a run continued as new sleeps what is left
            self.journal[pos] = {"op": "sleep", "until": workflow.now().timestamp() + secs}
            await self._run.wait(self.activation_id, None, max(secs, 0.001))
            return
        left = float(entry["until"]) - workflow.now().timestamp()
        if left > 0:
            await self._run.wait(self.activation_id, None, left)

    async def now(self) -> datetime:
        pos = self._next("now")
        entry = self._replay(pos, "now")
        if entry is None:
            now = workflow.now()
            self.journal[pos] = {"op": "now", "at": now.timestamp()}
            return now
        return datetime.fromtimestamp(float(entry["at"]), tz=workflow.now().tzinfo)

    async def promise(self, name: str) -> Any:
        self._check()
        pos = self._next("promise")
        entry = self._replay(pos, "promise", name)
        if entry is None:
            value = await self._run.wait_promise(name, self.agent, self.activation_id)
            self.journal[pos] = entry = {"op": "promise", "name": name, "value": value}
        return entry["value"]

    async def send(self, agent: str, payload: Any, *, delay: float | timedelta | None = None) -> None:
        secs = None if delay is None else checked_seconds(delay, what=f"run {self.run_id!r}: ctx.send delay to {agent!r}")
        self._check()
        pos = self._next("send")
        body = message_body(self._app, self, agent, payload)
        if self._replay(pos, "send", agent) is not None:
            return  # the run before a continue-as-new sent it
        deliver_at = workflow.now().timestamp() + secs if secs else None
        self._run.sent(MessageSent(self.activation_id, pos, agent, "send", body, deliver_at))
        self.journal[pos] = {"op": "send", "name": agent}

    async def call(self, agent: str, payload: Any) -> Any:
        chain = (*self.spec.call_chain, self.agent)
        if agent in chain:
            raise CallCycleError(
                f"run {self.run_id!r}: agent {self.agent!r} calls {agent!r}, which is waiting up the call chain "
                f"({' -> '.join((*chain, agent))}): the call would wait forever", run_id=self.run_id)
        self._check()
        pos = self._next("call")
        body = message_body(self._app, self, agent, payload)
        entry = self._replay(pos, "call", agent)
        if entry is not None:
            error = entry["error"]
            reply = Reply(entry["status"], entry["output"], ErrorInfo.from_json(error) if error else None, agent)
        else:
            # Sent again by a run continued as new while the callee runs: the engine knows the call.
            waiter = self._run.sent(MessageSent(self.activation_id, pos, agent, "call", body))
            assert waiter is not None
            self._run.pause(True)
            try:
                reply = await waiter
            finally:
                self._run.pause(False)
            self.journal[pos] = {"op": "call", "name": agent, "status": reply.status, "output": reply.output,
                                 "error": reply.error.to_json() if reply.error else None}
        return call_reply(self._app, self, agent, reply)
