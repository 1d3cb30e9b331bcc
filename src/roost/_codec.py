"""JSON encoding of everything that goes into a journal, and contract type checks."""

from __future__ import annotations

import json
import types
import typing
from functools import lru_cache
from typing import Any

import pydantic_core
from pydantic import BaseModel, TypeAdapter

from .errors import SerializationError

_MISSING = object()


def dumps(value: Any, *, what: str) -> str:
    """Encode ``value`` as JSON text, or raise SerializationError naming ``what``."""
    try:
        return pydantic_core.to_json(value).decode()
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as exc:
        raise SerializationError(
            f"{what}: value of type {type(value).__name__} cannot be journaled as JSON ({exc}). "
            "Return JSON-compatible data or a pydantic model."
        ) from exc


def jsonable(value: Any, *, what: str) -> Any:
    """``value`` as JSON-compatible data (what ``json.loads(dumps(value))`` gives, without the text)."""
    try:
        return pydantic_core.to_jsonable_python(value)
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as exc:
        raise SerializationError(
            f"{what}: value of type {type(value).__name__} cannot be journaled as JSON ({exc}). "
            "Return JSON-compatible data or a pydantic model."
        ) from exc


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@lru_cache(maxsize=512)
def adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def revive(value: Any, tp: Any) -> Any:
    """Turn decoded JSON back into ``tp`` (a model, a list of models, ...)."""
    if tp is None or tp is Any or tp is _MISSING:
        return value
    return adapter(tp).validate_python(value)


def type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def list_item_type(tp: Any) -> Any | None:
    """``T`` when ``tp`` is ``list[T]``, else None."""
    if typing.get_origin(tp) is list:
        args = typing.get_args(tp)
        return args[0] if args else Any
    return None


def fits(produced: Any, accepted: Any) -> bool:
    """Whether a value of type ``produced`` is a valid value of type ``accepted``."""
    if accepted is Any or produced == accepted:
        return True
    origin = typing.get_origin(accepted)
    if origin in (typing.Union, types.UnionType):
        return any(fits(produced, arm) for arm in typing.get_args(accepted))
    if origin is list and typing.get_origin(produced) is list:
        return fits(list_item_type(produced), list_item_type(accepted))
    if isinstance(produced, type) and isinstance(accepted, type):
        try:
            return issubclass(produced, accepted)
        except TypeError:
            return False
    return False


def is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)
