"""Plain functions as engines, sync or async, with or without a ``ctx`` parameter."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError
from ._base import Engine

if TYPE_CHECKING:
    from .._graph import AgentSpec
    from ..runtime import DurableContext


class FunctionEngine(Engine):
    """Without a ``ctx`` parameter the function runs as one durable step named after the agent.
    With one, it is orchestration code: it is replayed after a crash and uses ``ctx.step`` etc."""

    def __init__(self, fn: Callable[..., Any], *, agent: str) -> None:
        if not callable(fn):
            raise DefinitionError(f"agent {agent!r}: engine must be a function or an Engine, got {fn!r}")
        self.fn = fn
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        self.takes_ctx = "ctx" in params
        self.awaits_promises = self.takes_ctx
        if self.takes_ctx and not inspect.iscoroutinefunction(fn):
            raise DefinitionError(
                f"agent {agent!r}: engine {getattr(fn, '__name__', fn)!r} takes ctx, so it is orchestration "
                "code and must be 'async def' (it awaits ctx.step, ctx.sleep, ...)"
            )

    def check(self, spec: AgentSpec) -> None:
        try:
            params = [
                p
                for p in inspect.signature(self.fn).parameters.values()
                if p.name != "ctx" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            var_args = any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(self.fn).parameters.values())
        except (TypeError, ValueError):
            return
        required = [p for p in params if p.default is p.empty]
        n = spec.arity
        if not var_args and (len(required) > n or len(params) < n):
            raise DefinitionError(
                f"agent {spec.name!r}: engine {getattr(self.fn, '__name__', self.fn)!r} must accept {n} "
                f"positional input(s) (one per input contract), but its signature is "
                f"{inspect.signature(self.fn)}"
            )

    async def run(self, ctx: DurableContext, spec: AgentSpec, args: tuple[Any, ...]) -> Any:
        if self.takes_ctx:
            return await self.fn(*args, ctx=ctx)
        return await ctx.step(spec.name, self.fn, *args, retry=spec.retry)
