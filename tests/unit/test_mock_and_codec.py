from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel

from roost._codec import fits, list_item_type
from roost.engines import mock_value


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Inner(BaseModel):
    tags: list[str]
    weight: float


class Outer(BaseModel):
    name: str
    count: int
    ok: bool
    color: Color
    mode: Literal["a", "b"]
    inner: Inner
    maybe: int | None = None


def test_mock_values_are_deterministic_valid_and_vary_with_seed() -> None:
    one, two, other = mock_value(Outer, 1), mock_value(Outer, 1), mock_value(Outer, 2)
    assert one == two
    assert one != other
    assert isinstance(one, Outer) and len(one.inner.tags) == 2 and one.mode == "a"


def test_type_fit() -> None:
    assert fits(bool, int) and not fits(int, str)
    assert fits(Inner, Inner | None)
    assert fits(list[bool], list[int])
    assert list_item_type(list[Inner]) is Inner and list_item_type(Inner) is None
