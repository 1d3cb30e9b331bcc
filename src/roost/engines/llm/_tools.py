"""Tools: typed functions the model may call. Their argument schema comes from the type hints."""

from __future__ import annotations

import asyncio
import inspect
import re
import typing
from collections.abc import Callable
from typing import Any, overload

import pydantic
from pydantic import BaseModel, ConfigDict, Field, create_model

from ..._codec import dumps
from ...errors import DefinitionError
from ...runtime._retry import RetryPolicy
from ._schema import strict_schema

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Tool:
    """A function the model may call, with the JSON schema of its arguments.

    Build it with ``@tool`` (or pass a plain typed function to ``.with_tools``). Parameters
    need type hints (pydantic types, models, ``Annotated[str, Field(description=...)]``);
    the docstring is the description the model sees. Sync tools run in a worker thread.
    Inside a tool, ``roost.current_step().idempotency_key`` is stable across retries and
    recoveries: pass it to external APIs to deduplicate effects."""

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                 retry: RetryPolicy | None = None) -> None:
        if not callable(fn):
            raise DefinitionError(f"a tool must be a function, got {type(fn).__name__} {fn!r}")
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", ""))
        if not _TOOL_NAME.match(self.name):
            raise DefinitionError(
                f"tool name {self.name!r} is not valid: use 1-64 letters, digits, '_' or '-' (pass name=...)"
            )
        self.description = description if description is not None else (inspect.getdoc(fn) or "")
        self.retry = retry
        self.args_model, self._params = _args_model(fn, self.name)
        self.parameters: dict[str, Any] = self.args_model.model_json_schema(by_alias=True)
        self.parameters.pop("title", None)
        self.is_async = inspect.iscoroutinefunction(fn)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def spec(self, *, strict: bool = False) -> dict[str, Any]:
        """The entry of the request's ``tools`` list."""
        function: dict[str, Any] = {"name": self.name, "parameters": strict_schema(self.parameters) if strict
                                    else self.parameters}
        if self.description:
            function["description"] = self.description
        if strict:
            function["strict"] = True
        return {"type": "function", "function": function}

    def validate(self, arguments: Any) -> dict[str, Any]:
        """Keyword arguments for the function; raises pydantic.ValidationError if they do not fit."""
        model = self.args_model.model_validate(arguments)
        return {param: getattr(model, attr) for attr, param in self._params.items()}

    async def invoke(self, arguments: dict[str, Any]) -> str:
        """Call the function with validated ``arguments``; the result as the text the model reads."""
        kwargs = self.validate(arguments)
        if self.is_async:
            result = await self.fn(**kwargs)
        else:  # to_thread copies the context, so current_step() works in the thread too
            result = await asyncio.to_thread(self.fn, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        if isinstance(result, str):
            return result
        return dumps(result, what=f"the result of tool {self.name!r}")


def _args_model(fn: Callable[..., Any], tool_name: str) -> tuple[type[BaseModel], dict[str, str]]:
    """A pydantic model of ``fn``'s parameters. Fields get internal names with the parameter as
    alias, so parameters named like BaseModel attributes (``json``, ``schema``) still work."""
    try:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise DefinitionError(f"tool {tool_name!r}: cannot read its signature and type hints: {exc}") from exc
    fields: dict[str, Any] = {}
    params: dict[str, str] = {}
    for i, p in enumerate(sig.parameters.values()):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise DefinitionError(
                f"tool {tool_name!r}: parameter {p.name!r} is {p.kind.description}; tools take named parameters only"
            )
        if p.name not in hints:
            raise DefinitionError(
                f"tool {tool_name!r}: parameter {p.name!r} has no type hint; the model needs one to know what to pass"
            )
        default = ... if p.default is p.empty else p.default
        attr = f"p{i}"
        fields[attr] = (hints[p.name], Field(default, alias=p.name))
        params[attr] = p.name
    try:
        model = create_model(f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    except (pydantic.PydanticUserError, TypeError) as exc:
        raise DefinitionError(f"tool {tool_name!r}: its parameters cannot be described as JSON schema: {exc}") from exc
    return model, params


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(*, name: str | None = None, description: str | None = None,
         retry: RetryPolicy | None = None) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None, description: str | None = None,
         retry: RetryPolicy | None = None) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Declare a tool: ``@tool`` or ``@tool(name=..., description=..., retry=RetryPolicy(...))``.

    The function stays callable as before; ``agent(...).model(...).with_tools(search)`` offers it
    to the model. ``retry`` is the policy of this tool's steps (default: the agent's)."""
    if fn is not None:
        return Tool(fn)

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool(f, name=name, description=description, retry=retry)

    return wrap


def as_tool(value: Any) -> Tool:
    """A Tool as it is; a plain function becomes one."""
    return value if isinstance(value, Tool) else Tool(value)
