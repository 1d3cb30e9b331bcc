"""Running a step function with its retry policy: shared by backends that retry in-process."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import SerializationError, StepFailedError
from ._base import StepInfo, _current_step
from ._retry import RetryPolicy


async def call_step(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], info: StepInfo) -> Any:
    """Call ``fn`` once with ``info`` visible through ``current_step()``; sync code runs in a thread."""
    token = _current_step.set(info)
    try:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args, **kwargs)
        ctx = contextvars.copy_context()
        result = await asyncio.get_running_loop().run_in_executor(None, functools.partial(ctx.run, fn, *args, **kwargs))
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
) -> tuple[Any, int]:
    """Try ``fn`` per ``policy``; returns (result, attempts) or raises StepFailedError.

    ``wait`` sleeps between attempts (backends make it abortable); ``on_retry(attempt, exc)`` is
    called before waiting, so a backend can journal the failure; ``first_attempt`` continues a
    count journaled before a restart."""
    attempt = first_attempt
    if attempt > policy.max_attempts:
        raise StepFailedError(run_id=info.run_id, agent=info.agent, step=info.name, attempts=attempt - 1,
                              cause=RuntimeError("the process stopped after the last attempt had failed"))
    while True:
        try:
            step_info = info if attempt == 1 else StepInfo(info.run_id, info.agent, info.name, attempt, info.idempotency_key)
            return await call_step(fn, args, kwargs, step_info), attempt
        except SerializationError:
            raise
        except Exception as exc:
            if not policy.is_retryable(exc) or attempt >= policy.max_attempts:
                raise StepFailedError(run_id=info.run_id, agent=info.agent, step=info.name, attempts=attempt, cause=exc) from exc
            if on_retry is not None:
                on_retry(attempt, exc)
            await wait(policy.delay(attempt, exc))
            attempt += 1


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
