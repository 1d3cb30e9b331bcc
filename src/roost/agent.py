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
    from .engines.llm import Tool

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
        self.tools: tuple[Tool, ...] = ()
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
        from .engines.llm import LLMEngine

        impl = engine if isinstance(engine, Engine) else FunctionEngine(engine, agent=self.name)
        if self.tools and not isinstance(impl, LLMEngine):
            raise DefinitionError(
                f"agent {self.name!r} has tools ({', '.join(t.name for t in self.tools)}), which only a model "
                "engine can call: use .model(\"provider/name\") instead of .engine(...)"
            )
        self._engine = impl
        return self

    def model(self, spec: str, *, prompt: Callable[..., str] | None = None, **settings: Any) -> Agent:
        """Make this agent an LLM: ``.model("openai/gpt-4o-mini", temperature=0.2, max_tokens=400,
        system="...")``. Any OpenAI-compatible endpoint (``provider/name``: openai, ollama, vllm,
        llamacpp, lmstudio, litellm, openrouter, groq, together, or ``compatible`` with
        ``base_url=``). The output contract becomes JSON-schema structured output; tools come
        from ``.with_tools``. Settings: temperature, max_tokens, system, base_url, api_key_env,
        timeout, max_retries, max_turns, max_tool_errors, max_concurrency, strict, output_mode, retry,
        params (see docs/llm.md);
        ``prompt(*inputs) -> str`` renders the user message. Needs ``pip install "roost[llm]"``."""
        from .engines.llm import LLMEngine

        self._engine = LLMEngine(spec, agent=self.name, tools=self.tools, prompt=prompt, **settings)
        return self

    def with_tools(self, *tools: Callable[..., Any]) -> Agent:
        """Offer typed functions (``@tool`` or plain functions with type hints) to this agent's model.

        The model may call them in a loop before it answers; every call is a durable step whose
        ``roost.current_step().idempotency_key`` is stable across retries and recoveries."""
        from .engines.llm import LLMEngine, as_tool

        if self._engine is not None and not isinstance(self._engine, LLMEngine):
            raise DefinitionError(
                f"agent {self.name!r}: with_tools() needs a model engine (.model(\"provider/name\")), but this "
                "agent's engine is a function or another engine"
            )
        new = tuple(as_tool(t) for t in tools)
        names = [t.name for t in (*self.tools, *new)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DefinitionError(f"agent {self.name!r}: two tools are named {', '.join(map(repr, dupes))}")
        self.tools = (*self.tools, *new)
        if isinstance(self._engine, LLMEngine):
            self._engine.add_tools(new)
        return self

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
