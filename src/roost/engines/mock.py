"""MockEngine: fills the output contract deterministically from the input (for tests and demos)."""

from __future__ import annotations

import enum
import hashlib
import types
import typing
from typing import TYPE_CHECKING, Any

import pydantic_core
from pydantic import BaseModel

from .._codec import revive
from ._base import Engine

if TYPE_CHECKING:
    from .._graph import AgentSpec
    from ..runtime import DurableContext


def _seed(args: tuple[Any, ...]) -> int:
    raw = pydantic_core.to_json(list(args), fallback=repr)
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


def mock_value(tp: Any, seed: int, path: str = "value") -> Any:
    """A deterministic value of type ``tp``; equal seeds give equal values."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{path}".encode(), digest_size=8).digest(), "big")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is str:
        return f"{path}-{h % 10_000:04d}"
    if tp is bool:
        return bool(h % 2)
    if tp is int:
        return h % 10
    if tp is float:
        return (h % 1000) / 100
    if tp is type(None):
        return None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return next(iter(tp))
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp.model_validate(
            {
                name: mock_value(field.annotation, seed, f"{path}.{name}" if path != "value" else name)
                for name, field in tp.model_fields.items()
                if field.is_required() or field.annotation is not None
            }
        )
    if origin is typing.Literal:
        return args[0]
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return mock_value(non_none[0] if non_none else None, seed, path)
    if origin in (list, set, frozenset, tuple) and not (origin is tuple and len(args) != 2 or args[-1:] == (...,)):
        item = args[0] if args else str
        return [mock_value(item, seed, f"{path}[{i}]") for i in range(2)]
    if origin is tuple:
        return tuple(mock_value(a, seed, f"{path}[{i}]") for i, a in enumerate(args))
    if origin is dict:
        return {f"key{i}": mock_value(args[1] if args else str, seed, f"{path}[{i}]") for i in range(2)}
    if origin is typing.Annotated:
        return mock_value(args[0], seed, path)
    return None


class MockEngine(Engine):
    """Output derived from a hash of the input: the same input always gives the same output.

    ``fixed`` overrides fields (``MockEngine(score=9)``)."""

    awaits_promises = False

    def __init__(self, **fixed: Any) -> None:
        self.fixed = fixed
        self._types: dict[str, Any] = {}

    def produce(self, spec: AgentSpec, args: tuple[Any, ...]) -> Any:
        return revive(pydantic_core.to_jsonable_python(self.produce_for(spec.output_type, args)), spec.output_type)

    def check(self, spec: AgentSpec) -> None:
        self._types[spec.name] = spec.output_type

    def produce_json(self, agent: str, args: list[Any]) -> Any:
        """The step: JSON arguments in, JSON out, so any backend can run it in another process."""
        return pydantic_core.to_jsonable_python(self.produce_for(self._types[agent], args))

    def produce_for(self, output_type: Any, args: list[Any] | tuple[Any, ...]) -> Any:
        value = mock_value(output_type, _seed(tuple(args)))
        if self.fixed and isinstance(value, BaseModel):
            value = value.model_copy(update=self.fixed)
        return value

    async def run(self, ctx: DurableContext, spec: AgentSpec, args: tuple[Any, ...]) -> Any:
        self._types.setdefault(spec.name, spec.output_type)
        return await ctx.step(spec.name, self.produce_json, spec.name, pydantic_core.to_jsonable_python(list(args)),
                              retry=spec.retry)
