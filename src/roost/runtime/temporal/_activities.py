"""The worker side of steps: one dynamic activity runs every step of every agent.

A step's function is found again in the worker from a reference the workflow sends (the agent's
function engine, a method of the agent's engine, an importable function, or a function of the
app's own file, also when that file ran as ``__main__``) and its arguments travel as JSON. A
function that cannot be named that way (a lambda, a closure) is still a real activity, whose
outcome is in the history once it finished: it runs on the task queue of the process whose
workflow code holds it (:data:`PROCESS_QUEUES`), found there through :data:`LOCAL`. If that process
is gone, the workflow schedules it again on its own process's queue (see ``TemporalContext.step``).
roost never uses local activities.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import sys
import time
import typing
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

from ..._codec import dumps, jsonable, revive
from ..._graph import CompiledApp
from ..._traceback import user_traceback
from ...errors import ConfigError, RetryableError, SerializationError, TerminalError
from .._base import StepInfo
from .._remote import step_failure
from .._retry import RetryPolicy
from .._steps import call_step, log_attempt

_log = logging.getLogger("roost.temporal")
HEARTBEAT_EVERY = 0.5
"""Seconds between heartbeats of a running step (the workflow sets a heartbeat timeout of a few
seconds, so a step whose worker was killed is retried elsewhere within that time)."""

APPS: dict[tuple[str, str], CompiledApp] = {}
"""(task queue, app name) -> the app, for the workers of this process."""

LOCAL: dict[str, tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = {}
"""token -> (function, args, kwargs) of the steps whose function only this process holds."""
LOCAL_KEY = "local"
"""The step request's field holding that token (absent for steps found by reference)."""
PROCESS_QUEUES: dict[str, str] = {}
"""A task queue this process serves -> the task queue of its own activity worker (unique to the
process), where the steps of :data:`LOCAL` run."""
MOVED = "StepMoved"
"""The failure type of a step whose function is not in the process that took it (the workflow
moved to another process meanwhile): the workflow schedules the step again where it is now."""


def find_app(task_queue: str, name: str, fingerprint: str | None = None) -> CompiledApp:
    app = APPS.get((task_queue, name))
    if app is None:  # a Replayer runs workflows under a task queue of its own: the run's version
        same = {id(a): a for (_, n), a in APPS.items()
                if n == name and (fingerprint is None or a.fingerprint == fingerprint)}
        app = next(iter(same.values())) if len(same) == 1 or fingerprint is not None and same else None
    if app is None:
        raise ApplicationError(
            f"this worker (task queue {task_queue!r}) does not serve app {name!r}; start one with "
            f"'roost serve FILE' for that app", type="ConfigError", non_retryable=False)
    return app


APP_FILES: dict[str, str] = {}
"""app name -> the source file that built it (``App`` records it), for the apps of this process."""


def _lookup(module: Any, qualname: str) -> Any:
    found = module
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _same_file(module: Any, path: str | None) -> bool:
    file = getattr(module, "__file__", None)
    return bool(file and path and os.path.realpath(file) == os.path.realpath(path))


def step_ref(app: CompiledApp, agent: str, fn: Callable[..., Any]) -> dict[str, str] | None:
    """How a worker finds ``fn`` again, or None when only this process can (run it locally)."""
    engine = app.specs[agent].engine
    if getattr(engine, "fn", None) is fn:
        return {"kind": "engine"}
    owner = getattr(fn, "__self__", None)
    if owner is engine and owner is not None and hasattr(fn, "__name__"):
        return {"kind": "method", "name": fn.__name__}
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or not qualname or "<" in qualname:
        return None
    if module == "__main__":
        # A function of the script that was run: every worker finds it again in the app's file
        # (a worker started with 'roost serve FILE' has loaded that file under another name).
        path = APP_FILES.get(app.name)
        try:
            found: Any = _lookup(sys.modules["__main__"], qualname)
        except (KeyError, AttributeError):
            return None
        if path and found is fn and _same_file(sys.modules["__main__"], path):
            return {"kind": "script", "qualname": qualname, "file": path}
        return None
    try:
        found = _lookup(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        return None
    if found is fn:
        return {"kind": "import", "module": module, "qualname": qualname}
    return None


def _script_module(app: CompiledApp, ref: dict[str, str]) -> Any:
    """The module of the app's own file in this process: ``__main__`` when this process ran it,
    else the module a worker loaded it as ('roost serve FILE')."""
    path = APP_FILES.get(app.name) or ref.get("file")
    candidates = [sys.modules.get("__main__"), *list(sys.modules.values())]
    for module in candidates:
        if module is not None and _same_file(module, path):
            return module
    raise ConfigError(f"step function {ref['qualname']!r} of app {app.name!r} lives in {path}, which this worker has "
                      "not loaded: start workers with 'roost serve FILE' for that file")


def resolve_ref(app: CompiledApp, agent: str, ref: dict[str, str]) -> Callable[..., Any]:
    spec = app.specs.get(agent)
    if spec is None:
        raise ConfigError(f"app {app.name!r} served here has no agent {agent!r}: is this worker running other code?")
    if ref["kind"] == "engine":
        fn: Callable[..., Any] = spec.engine.fn  # type: ignore[attr-defined]
        return fn
    if ref["kind"] == "method":
        method: Callable[..., Any] = getattr(spec.engine, ref["name"])
        return method
    if ref["kind"] == "script":
        return _lookup(_script_module(app, ref), ref["qualname"])  # type: ignore[no-any-return]
    return _lookup(importlib.import_module(ref["module"]), ref["qualname"])  # type: ignore[no-any-return]


def _param_types(fn: Callable[..., Any]) -> tuple[list[Any], dict[str, Any]]:
    try:
        hints = typing.get_type_hints(fn)
        params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    except (TypeError, ValueError, NameError):
        return [], {}
    positional = [hints.get(p.name) for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return positional, {p.name: hints.get(p.name) for p in params}


def revive_args(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """JSON arguments back into the types ``fn`` annotates (models, lists of models, ...)."""
    positional, named = _param_types(fn)
    out = tuple(revive(a, positional[i] if i < len(positional) else None) for i, a in enumerate(args))
    return out, {k: revive(v, named.get(k)) for k, v in kwargs.items()}


def _non_retryable(exc: BaseException, names: Sequence[str]) -> bool:
    if isinstance(exc, TerminalError):
        return True
    return any(f"{t.__module__}.{t.__qualname__}" in names for t in type(exc).__mro__)


async def _heartbeat() -> None:
    while True:
        await asyncio.sleep(HEARTBEAT_EVERY)
        activity.heartbeat()


BATCH_SIZE = 100
"""Most steps one batch activity runs (see ``run_batch``)."""


def _function(app: CompiledApp, req: dict[str, Any]) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """A step's function and its arguments, revived to the types it annotates."""
    fn = resolve_ref(app, req["agent"], req["ref"])
    if req["ref"]["kind"] == "engine":  # the agent's own function: its inputs have the contract's types
        spec = app.specs[req["agent"]]
        fargs = tuple(revive(a, spec.slot_type(i) if spec.kind == "converge" else spec.input_type)
                      for i, a in enumerate(req["args"]))
        return fn, fargs, req["kwargs"]
    fargs, fkwargs = revive_args(fn, req["args"], req["kwargs"])
    return fn, fargs, fkwargs


async def run_batch(req: dict[str, Any]) -> dict[str, Any]:
    """Many steps of one kind (the items of a fan-out) in one activity. Each step is retried here
    per its policy and ends with its own outcome (value or failure); the outcomes reached so far
    travel with the heartbeats, so a batch retried after its worker died runs only the steps
    whose outcome no heartbeat had carried yet (at most about a second's worth)."""
    info = activity.info()
    app = find_app(info.task_queue, req["app"])
    policy = RetryPolicy(**req["policy"])
    done: dict[str, Any] = {}
    if info.heartbeat_details:
        earlier = info.heartbeat_details[0]
        if isinstance(earlier, dict):
            done.update(earlier)

    async def one(i: int, item: dict[str, Any]) -> None:
        if str(i) in done:
            return
        t0 = time.time()
        attempt = info.attempt  # a batch retried after its worker died goes on counting
        first = attempt
        where = f"run {item['run_id']!r}, agent {item['agent']!r}, step {item['step']!r}"
        while True:
            step = _info(item, attempt)
            try:
                fn, fargs, fkwargs = _function(app, item)
                result = await call_step(fn, fargs, fkwargs, step, traced=item.get("traced", True))
                done[str(i)] = {"v": jsonable(result, what=where), "t0": t0, "t1": time.time(), "n": attempt}
                return
            except SerializationError as exc:
                done[str(i)] = {"s": str(exc), "t0": t0, "t1": time.time(), "n": attempt}
                return
            except Exception as exc:
                if _non_retryable(exc, item.get("non_retryable", [])) or attempt - first + 1 >= policy.max_attempts:
                    log_attempt(step, attempt, exc, None, logger=_log)
                    done[str(i)] = {"e": step_failure(exc), "t0": t0, "t1": time.time(), "n": attempt}
                    return
                delay = policy.delay(attempt - first + 1, exc)
                log_attempt(step, attempt, exc, delay, logger=_log)
                await asyncio.sleep(delay)
                attempt += 1

    async def beat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            activity.heartbeat(dict(done))

    beats = asyncio.create_task(beat())
    try:
        await asyncio.gather(*(one(i, item) for i, item in enumerate(req["batch"])))
    finally:
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats
    return {"results": [done[str(i)] for i in range(len(req["batch"]))]}


def _info(req: dict[str, Any], attempt: int) -> StepInfo:
    return StepInfo(req["run_id"], req["agent"], req["step"], attempt, req["key"], req.get("activation", ""),
                    req.get("cause"))


@activity.defn(dynamic=True)
async def run_step(args: Sequence[RawValue]) -> dict[str, Any]:
    """Every step: find the function, call it once, return its JSON result with its timings."""
    req: dict[str, Any] = activity.payload_converter().from_payload(args[0].payload, dict)
    if "batch" in req:
        return await run_batch(req)
    info = activity.info()
    attempt = info.attempt
    step = _info(req, attempt)
    if LOCAL_KEY in req:
        found = LOCAL.get(req[LOCAL_KEY])
        if found is None:  # the workflow moved to another process between scheduling and running
            raise ApplicationError(f"step {req['step']!r} of agent {req['agent']!r} is not held by this process",
                                   type=MOVED, non_retryable=True)
        fn, fargs, fkwargs = found
    else:
        fn, fargs, fkwargs = _function(find_app(info.task_queue, req["app"]), req)
    beats = asyncio.create_task(_heartbeat())
    t0 = time.time()
    try:
        result = await call_step(fn, fargs, fkwargs, step, traced=req.get("traced", True))
        encoded = dumps(result, what=f"run {step.run_id!r}, agent {step.agent!r}, step {step.name!r}")
    except SerializationError as exc:
        raise ApplicationError(str(exc), {"attempt": attempt}, type="SerializationError", non_retryable=True) from None
    except Exception as exc:
        delay = exc.retry_after if isinstance(exc, RetryableError) and exc.retry_after else None
        non_retryable = _non_retryable(exc, req.get("non_retryable", []))
        # Temporal retries the activity (per the step's policy): whether this attempt was the last, it decides.
        log_attempt(step, attempt, exc, None if non_retryable else "by Temporal", logger=_log)
        raise ApplicationError(
            str(exc), {"attempt": attempt, "traceback": user_traceback(exc)},
            type=getattr(exc, "kind", None) or type(exc).__name__,
            non_retryable=non_retryable,
            next_retry_delay=timedelta(seconds=delay) if delay else None,
        ) from exc
    finally:
        if beats is not None:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats
    return {"v": json.loads(encoded), "t0": t0, "t1": time.time(), "n": attempt}

