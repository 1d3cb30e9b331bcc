"""Running a step function with its retry policy: shared by backends that retry in-process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import inspect
import logging
import os
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from .. import _tracing
from .._redact import redact_text
from ..errors import SerializationError, StepFailedError
from ._base import RunAborted, StepInfo, _current_step
from ._branches import internal
from ._retry import RetryPolicy

_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4),
                                                  thread_name_prefix="roost-step")
"""Sync steps run here, not in the loop's default executor: a run that times out or is closed
returns at once (``asyncio.run`` joins only the default executor), while a step still running
finishes in its thread (the interpreter joins these threads at exit) and is journaled then, by
the backend's ``on_detached``."""
_INFLIGHT: dict[str, concurrent.futures.Future[Any]] = {}
"""Sync attempts still running, by idempotency key: a step resumed in the same process (after a
timeout or a closed runtime) waits for the attempt still running, never doubles it."""

_log = logging.getLogger("roost.steps")

Detached = Callable[["concurrent.futures.Future[Any]"], None]
"""Called with a sync attempt still running (or just finished) when its caller is cancelled."""


def _forget(key: str, cf: concurrent.futures.Future[Any]) -> None:
    if _INFLIGHT.get(key) is cf:
        del _INFLIGHT[key]


def _really_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def attempt_running(idempotency_key: str) -> bool:
    """Whether a sync attempt of the step with ``idempotency_key`` is running in a thread."""
    cf = _INFLIGHT.get(idempotency_key)
    return cf is not None and not cf.done()


async def _in_thread(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], info: StepInfo,
                     on_detached: Detached | None) -> Any:
    # Only a backend that journals attempts outliving their caller (on_detached) joins them: for
    # the others (Restate, Temporal) a retried attempt is a fresh one, which a hung thread must not block.
    cf = _INFLIGHT.get(info.idempotency_key) if on_detached is not None else None
    if cf is None or cf.done():
        ctx = contextvars.copy_context()
        cf = _EXECUTOR.submit(ctx.run, fn, *args, **kwargs)
        _INFLIGHT[info.idempotency_key] = cf
        cf.add_done_callback(functools.partial(_forget, info.idempotency_key))
    try:
        return await asyncio.wrap_future(cf)  # cancelling this never stops a running attempt
    except asyncio.CancelledError:
        if on_detached is not None and _really_cancelled():
            on_detached(cf)  # the backend journals the attempt's result when it returns
        raise


async def call_step(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], info: StepInfo,
                    on_detached: Detached | None = None, *, traced: bool = True) -> Any:
    """Call ``fn`` once with ``info`` visible through ``current_step()``; sync code runs in a thread.

    Every runtime calls this only for an attempt that really runs (never for a journaled result),
    so this is where the attempt's ``step <name>`` span is made (``traced=False``: none).

    ``on_detached(future)`` is called when the caller of a sync attempt is cancelled (a timeout,
    a closed runtime) with the attempt's future, still running or just done, so the backend can
    still journal its result when it returns."""
    token = _current_step.set(info)
    try:
        with internal(), _tracing.step_span(info, on=traced):
            if inspect.iscoroutinefunction(fn):
                return await fn(*args, **kwargs)
            result = await _in_thread(fn, args, kwargs, info, on_detached)
            if inspect.isawaitable(result):
                return await result
            return result
    finally:
        _current_step.reset(token)


async def run_with_retry(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    policy: RetryPolicy,
    info: StepInfo,
    wait: Callable[[float], Awaitable[None]],
    first_attempt: int = 1,
    on_retry: Callable[[int, BaseException], None] | None = None,
    on_detached: Callable[[int], Detached] | None = None,
    traced: bool = True,
) -> tuple[Any, int]:
    """Try ``fn`` per ``policy``; returns (result, attempts) or raises StepFailedError.

    ``wait`` sleeps between attempts (backends make it abortable); ``on_retry(attempt, exc)`` is
    called before waiting, so a backend can journal the failure; ``first_attempt`` continues a
    count journaled before a restart; ``on_detached(attempt)`` gives the callback for an
    attempt that outlives its caller (see ``call_step``).

    Any exception from user code counts as a failed attempt, BaseExceptions included (a
    ``CancelledError`` the step raised itself, ``GeneratorExit``), except KeyboardInterrupt,
    SystemExit, a real cancellation of the caller, and roost's own control flow."""
    attempt = first_attempt
    if attempt > policy.max_attempts:
        raise StepFailedError(run_id=info.run_id, agent=info.agent, step=info.name, attempts=attempt - 1,
                              cause=RuntimeError("the process stopped after the last attempt had failed"))
    while True:
        try:
            step_info = info if attempt == 1 else dataclasses.replace(info, attempt=attempt)
            detached = on_detached(attempt) if on_detached is not None else None
            return await call_step(fn, args, kwargs, step_info, detached, traced=traced), attempt
        except (SerializationError, KeyboardInterrupt, SystemExit, RunAborted):
            raise
        except asyncio.CancelledError as exc:
            if _really_cancelled():
                raise
            failure: BaseException = exc
        except BaseException as exc:
            failure = exc
        if not policy.is_retryable(failure) or attempt >= policy.max_attempts:
            log_attempt(info, attempt, failure, None)
            raise StepFailedError(run_id=info.run_id, agent=info.agent, step=info.name, attempts=attempt,
                                  cause=failure) from failure
        if on_retry is not None:
            on_retry(attempt, failure)
        delay = policy.delay(attempt, failure)
        log_attempt(info, attempt, failure, delay)
        await wait(delay)
        attempt += 1


def log_attempt(info: StepInfo, attempt: int, cause: BaseException, retry_in: float | str | None,
                logger: logging.Logger = _log) -> None:
    """Log a failed attempt of a step: WARNING when it is retried (in ``retry_in`` seconds, or as
    ``retry_in`` says), ERROR when it was the last. The record carries ``run_id``, ``agent``,
    ``activation_id``, ``step``, ``attempt`` and ``cause`` (``extra=`` fields)."""
    text = redact_text(str(cause))  # credentials in URLs are masked, as in the run's record
    extra = {"run_id": info.run_id, "agent": info.agent, "activation_id": info.activation_id, "step": info.name,
             "attempt": attempt, "cause": f"{type(cause).__name__}: {text}"}
    if retry_in is not None:
        when = f"in {retry_in:.2f}s" if isinstance(retry_in, float | int) else retry_in
        logger.warning("run %s, agent %s, step %r: attempt %d failed (%s: %s); retried %s",
                       info.run_id, info.agent, info.name, attempt, type(cause).__name__, text, when, extra=extra)
    else:
        logger.error("run %s, agent %s, step %r: attempt %d failed (%s: %s); not retried",
                     info.run_id, info.agent, info.name, attempt, type(cause).__name__, text, extra=extra)


@functools.lru_cache(maxsize=1024)
def return_type(fn: Callable[..., Any]) -> Any:
    """The annotated return type of ``fn`` (unwrapping Awaitable), or None."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return None
    ret = hints.get("return")
    if typing.get_origin(ret) in (typing.Awaitable, typing.Coroutine):
        ret = typing.get_args(ret)[-1]
    return ret
