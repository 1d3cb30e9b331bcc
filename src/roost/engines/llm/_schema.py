"""The output contract as JSON-schema structured output, and checking the model's answer."""

from __future__ import annotations

import copy
import json
import re
import typing
from dataclasses import dataclass
from typing import Any

import pydantic
from pydantic import TypeAdapter, create_model

from ..._codec import is_model, type_name
from ...errors import DefinitionError
from ._settings import schema_name

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?```\s*$", re.DOTALL)


def field_errors(exc: pydantic.ValidationError) -> str:
    """``score: Input should be a valid integer; notes: Field required``."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or '(value)'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


def failing_fields(exc: pydantic.ValidationError) -> list[str]:
    return [".".join(map(str, e["loc"])) or "(value)" for e in exc.errors(include_url=False)]


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy fit for OpenAI's strict mode: every object closed and all its properties required.

    Fields that have a default become required too (the model then always gives a value, which
    validates the same); ``default`` keywords are dropped, strict mode refuses them."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            node.pop("default", None)
            if node.get("type") == "object" or "properties" in node:
                props = node.get("properties") or {}
                node["additionalProperties"] = False
                node["required"] = list(props)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(out)
    return out


def _short_name(tp: Any) -> str:
    """``Review``, ``list_Review``, ``dict_str_int``: a readable name without module paths."""
    args = typing.get_args(tp)
    if not args:
        return str(getattr(tp, "__name__", None) or type_name(tp))
    origin = typing.get_origin(tp)
    return "_".join([str(getattr(origin, "__name__", None) or "Union"), *map(_short_name, args)])


@dataclass(frozen=True)
class OutputSchema:
    """How an output contract is asked for and checked.

    A pydantic model is asked for as it is. Anything else (``list[Review]``, ``str``, ``int``)
    is wrapped in an object ``{"value": ...}``, since structured outputs need an object at the
    top, and unwrapped after validation."""

    tp: Any
    name: str
    schema: dict[str, Any]
    wrapped: bool
    _adapter: TypeAdapter[Any]

    @classmethod
    def of(cls, tp: Any, *, agent: str) -> OutputSchema:
        wrapped = not is_model(tp)
        target: Any = create_model("Output", value=(tp, ...)) if wrapped else tp
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(target)
            schema = adapter.json_schema()
        except Exception as exc:  # pydantic cannot describe the type as JSON schema
            raise DefinitionError(
                f"agent {agent!r}: its output contract {type_name(tp)} cannot be described as JSON schema for "
                f"the model: {exc}"
            ) from exc
        return cls(tp, schema_name(_short_name(tp)), schema, wrapped, adapter)

    def response_format(self, *, strict: bool, mode: str = "json_schema") -> dict[str, Any] | None:
        """The request's ``response_format`` for ``mode`` (None: ask in the prompt only)."""
        schema = strict_schema(self.schema) if strict else self.schema
        if mode == "prompt":
            return None
        if mode == "json_object":
            return {"type": "json_object", "schema": schema}
        spec: dict[str, Any] = {"name": self.name, "schema": schema}
        if strict:
            spec["strict"] = True
        return {"type": "json_schema", "json_schema": spec}

    def parse(self, content: str | None) -> Any:
        """The answer as the contract's type; raises pydantic.ValidationError if it does not fit."""
        text = (content or "").strip()
        fenced = _FENCE.match(text)
        if fenced:  # some models wrap JSON in a markdown fence even when asked not to
            text = fenced.group(1).strip()
        try:
            value = self._adapter.validate_json(text or '""')
        except pydantic.ValidationError as invalid:
            # Some servers' JSON grammars let raw newlines and tabs into strings, which strict JSON
            # refuses; a lenient parse keeps such an answer when it fits the contract otherwise.
            try:
                loose = json.loads(text, strict=False)
            except ValueError:
                raise invalid from None  # not JSON at all: the original error, with its detail
            value = self._adapter.validate_python(loose)
        return value.value if self.wrapped else value

    def instruction(self, *, with_schema: bool = False) -> str:
        shape = "a JSON object" if not self.wrapped else 'a JSON object {"value": ...}'
        if with_schema:
            schema = json.dumps(self.schema, separators=(",", ":"))
            return f"Reply with {shape} that fits this JSON schema ({self.name}), and nothing else:\n{schema}"
        return f"Reply with {shape} that fits the {self.name} schema of the response format, and nothing else."

