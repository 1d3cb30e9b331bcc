"""The definition API: ``agent(name)`` and the wiring methods users call on it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DefinitionError
from .runtime._retry import RetryPolicy

if TYPE_CHECKING:
    from .engines import Engine

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")


@dataclass(frozen=True)
class Edge:
    """``target`` reacts to ``source``; edges made by one ``reacts_to`` call share a group."""

    source: str
    target: str
    group: int
    when: Callable[[Any], bool] | None = None
    map: Callable[[Any], Any] | None = None
    each: bool = False


class Agent:
    """An agent: typed contracts, an engine, and what it reacts to. Build it with ``agent()``."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise DefinitionError(
                f"agent name {name!r} is not valid: use letters, digits, '_' or '-' (at most 64), "
                "starting with a letter or '_'"
            )
        self.name = name
        self.input_type: Any = None
        self.output_type: Any = None
        self._engine: Engine | None = None
        self.edges: list[Edge] = []
        self.approval = False
        self.retry_policy: RetryPolicy | None = None
        self.key_fn: Callable[[Any], str] | None = None
        self._groups = 0

    def __repr__(self) -> str:
        return f"agent({self.name!r})"

    def contracts(self, *, input: Any, output: Any) -> Agent:  # noqa: A002 - the public spelling
        """Declare the input and output types (pydantic models, ``list[Model]``, or a tuple of
        inputs for an agent that converges several upstream outputs)."""
        self.input_type = tuple(input) if isinstance(input, (tuple, list)) else input
        self.output_type = output
        return self

    def engine(self, engine: Engine | Callable[..., Any]) -> Agent:
        """Set the engine: a plain function (sync or async), or an Engine such as MockEngine.

        A function with a ``ctx`` parameter is orchestration code and receives the
        DurableContext; any other function runs as one durable step."""
        from .engines import Engine, FunctionEngine

        self._engine = engine if isinstance(engine, Engine) else FunctionEngine(engine, agent=self.name)
        return self

    def model(self, spec: str, **settings: Any) -> Agent:
        """An LLM engine (``"provider/name"``). Not available in this release."""
        raise DefinitionError(
            f"agent {self.name!r}: .model({spec!r}) needs the LLM engine, which this version of roost "
            "does not ship yet; use .engine(fn) with a function or .engine(MockEngine()) for now"
        )

    def reacts_to(
        self,
        *sources: Agent,
        when: Callable[[Any], bool] | None = None,
        map: Callable[[Any], Any] | None = None,  # noqa: A002 - the public spelling
        each: bool = False,
    ) -> Agent:
        """React to the output of ``sources``.

        One source: this agent is activated by each of its outputs. Several sources in one call:
        converge, activated once per run when every source has produced. ``when`` filters
        outputs; ``map`` transforms them first; ``each=True`` activates once per item of a list
        output."""
        if not sources:
            raise DefinitionError(f"agent {self.name!r}: reacts_to() needs at least one agent")
        for src in sources:
            if not isinstance(src, Agent):
                raise DefinitionError(
                    f"agent {self.name!r}: reacts_to() takes agents, got {type(src).__name__} {src!r}"
                )
        if len({s.name for s in sources}) != len(sources):
            raise DefinitionError(f"agent {self.name!r}: reacts_to() names the same agent twice")
        self._groups += 1
        for src in sources:
            self.edges.append(Edge(src.name, self.name, self._groups, when, map, each))
        return self

    def then(self, other: Agent, **options: Any) -> Agent:
        """``a.then(b)`` is ``b.reacts_to(a)``; returns ``b`` so chains read left to right."""
        other.reacts_to(self, **options)
        return other

    def needs_approval(self) -> Agent:
        """Hold this agent's output until ``app.resolve(run_id, name, True/False)``."""
        self.approval = True
        return self

    def retry(self, policy: RetryPolicy | None = None, **options: Any) -> Agent:
        """Set the retry policy of this agent's steps (``RetryPolicy`` or its fields)."""
        self.retry_policy = policy if policy is not None else RetryPolicy(**options)
        return self

    def keyed_by(self, key: Callable[[Any], str]) -> Agent:
        """Make this agent an entity keyed by ``key(input)``: its state lives across runs under
        that key, and activations with the same key run one at a time."""
        self.key_fn = key
        return self

    @property
    def engine_impl(self) -> Engine | None:
        return self._engine


def agent(name: str) -> Agent:
    """Declare an agent: ``agent("writer").contracts(input=A, output=B).engine(fn)``."""
    return Agent(name)
