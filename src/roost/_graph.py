"""The wiring graph: validation when an App is built, and routing of outputs to messages.

Everything here is pure and backend-neutral: every runtime routes outputs the same way.
"""

from __future__ import annotations

import hashlib
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._codec import fits, list_item_type, type_name
from .agent import Agent, Edge
from .engines import Engine
from .errors import DefinitionError
from .runtime._retry import DEFAULT_RETRY, RetryPolicy

Kind = Literal["single", "converge", "gather"]
_APP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


@dataclass
class AgentSpec:
    """An agent as compiled into an App (immutable view used at run time)."""

    name: str
    input_type: Any
    output_type: Any
    engine: Engine
    approval: bool
    retry: RetryPolicy
    key_fn: Callable[[Any], str] | None
    kind: Kind = "single"
    slots: dict[str, int] = field(default_factory=dict)
    """converge: upstream agent -> position in the input tuple."""
    entry: bool = False

    @property
    def arity(self) -> int:
        return len(self.input_type) if self.kind == "converge" else 1

    def slot_type(self, slot: int) -> Any:
        return self.input_type[slot]


class CompiledApp:
    """A validated set of agents and edges."""

    def __init__(self, name: str, agents: Sequence[Agent], max_activations: int,
                 entry: Sequence[Agent] | None = None) -> None:
        if not isinstance(name, str) or not _APP_NAME.match(name):
            raise DefinitionError(
                f"app name {name!r} is not valid: use letters, digits, '_' or '-' (at most 64), starting with a letter"
            )
        self.name = name
        self.max_activations = max_activations
        self.tracing = True
        """OpenTelemetry spans on (``App(tracing=False)`` turns them off; see ``roost._tracing``)."""
        self.agents: dict[str, Agent] = {}
        for a in agents:
            if not isinstance(a, Agent):
                raise DefinitionError(f"App takes agents, got {type(a).__name__} {a!r}")
            if a.name in self.agents:
                raise DefinitionError(f"two agents are named {a.name!r}; agent names must be unique in an App")
            self.agents[a.name] = a
        if not self.agents:
            raise DefinitionError("an App needs at least one agent")
        self.edges: list[Edge] = [e for a in self.agents.values() for e in a.edges]
        self.out_edges: dict[str, list[Edge]] = {n: [] for n in self.agents}
        for e in self.edges:
            if e.source not in self.agents:
                raise DefinitionError(
                    f"agent {e.target!r} reacts to {e.source!r}, which is not in this App "
                    f"(agents: {', '.join(sorted(self.agents))})"
                )
            self.out_edges[e.source].append(e)
        self.specs = {n: self._spec(a) for n, a in self.agents.items()}
        self._mark_entries(entry)
        self.entries = [s for s in self.specs.values() if s.entry]
        if not self.entries:
            raise DefinitionError("no entry agent: every agent reacts to another, so nothing can start a run")
        for e in self.edges:
            self._check_edge(e)
        self._check_loops()
        self._check_reachable()
        self.fingerprint = self._fingerprint()

    # -- building ---------------------------------------------------------------------------

    def _spec(self, a: Agent) -> AgentSpec:
        if a.input_type is None or a.output_type is None:
            raise DefinitionError(f"agent {a.name!r} has no contracts: call .contracts(input=..., output=...)")
        if a.engine_impl is None:
            raise DefinitionError(
                f"agent {a.name!r} has no engine: call .engine(fn) or .engine(MockEngine())"
            )
        groups = sorted({e.group for e in a.edges})
        converge = [g for g in groups if sum(e.group == g for e in a.edges) > 1]
        spec = AgentSpec(
            name=a.name,
            input_type=a.input_type,
            output_type=a.output_type,
            engine=a.engine_impl,
            approval=a.approval,
            retry=a.retry_policy or DEFAULT_RETRY,
            key_fn=a.key_fn,
            entry=not a.edges,
        )
        if isinstance(a.input_type, tuple):
            if len(groups) != 1 or not converge:
                raise DefinitionError(
                    f"agent {a.name!r} takes a tuple of inputs {self._tn(a.input_type)}, so it must converge: "
                    f"call .reacts_to(...) once, with one agent per input"
                )
            spec.kind = "converge"
            spec.slots = self._match_slots(a)
        elif converge:
            sources = [e.source for e in a.edges if e.group == converge[0]]
            raise DefinitionError(
                f"agent {a.name!r} converges {', '.join(map(repr, sources))}, so its input contract must be a "
                f"tuple with one type per agent, e.g. input=({', '.join(self._out_name(s) for s in sources)})"
            )
        elif list_item_type(a.input_type) is not None and a.edges:
            if all(self._produced(e) is not None and not fits(self._produced(e), a.input_type) for e in a.edges):
                spec.kind = "gather"
        spec.engine.check(spec)
        return spec

    def _mark_entries(self, entry: Sequence[Agent] | None) -> None:
        """Entry agents: those given, else those reacting to nothing, plus loop heads (agents whose
        every input edge has a when= and that nothing else leads to, like a writer its critic sends
        back to)."""
        if entry is not None:
            for s in self.specs.values():
                s.entry = False
            for a in entry:
                if a.name not in self.specs:
                    raise DefinitionError(f"entry agent {a.name!r} is not in this App")
                if self.specs[a.name].kind != "single":
                    raise DefinitionError(f"entry agent {a.name!r} converges inputs, so a run input cannot start it")
                self.specs[a.name].entry = True
            return
        entries = {s.name for s in self.specs.values() if s.entry}
        reached = self._reachable(entries)
        for name, a in self.agents.items():
            if (name not in reached and a.edges and all(e.when is not None for e in a.edges)
                    and self.specs[name].kind == "single" and name in self._downstream(name)):
                self.specs[name].entry = True
                entries.add(name)
                reached = self._reachable(entries)

    def _downstream(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = [name]
        while todo:
            for e in self.out_edges[todo.pop()]:
                if e.target not in seen:
                    seen.add(e.target)
                    todo.append(e.target)
        return seen

    def _out_name(self, name: str) -> str:
        a = self.agents.get(name)
        return type_name(a.output_type) if a and a.output_type is not None else "?"

    @staticmethod
    def _tn(tp: Any) -> str:
        if isinstance(tp, tuple):
            return "(" + ", ".join(type_name(t) for t in tp) + ")"
        return type_name(tp)

    def _produced(self, e: Edge) -> Any | None:
        """The type an edge delivers, or None when a ``map`` without annotation hides it."""
        src = self.agents[e.source]
        produced = src.output_type
        if e.each:
            item = list_item_type(produced)
            if item is None:
                raise DefinitionError(
                    f"agent {e.target!r} reacts to {e.source!r} with each=True, but {e.source!r} outputs "
                    f"{type_name(produced)}, not a list"
                )
            produced = item
        if e.map is not None:
            try:
                ret = typing.get_type_hints(e.map).get("return")
            except Exception:  # unresolvable annotation: checked at run time instead
                ret = None
            return ret
        return produced

    def _match_slots(self, a: Agent) -> dict[str, int]:
        slots_t: tuple[Any, ...] = a.input_type
        sources = [e for e in a.edges]
        if len(sources) != len(slots_t):
            raise DefinitionError(
                f"agent {a.name!r} converges {len(sources)} agents "
                f"({', '.join(repr(e.source) for e in sources)}) but its input contract "
                f"{self._tn(slots_t)} has {len(slots_t)} entries"
            )
        produced = [self._produced(e) for e in sources]
        if all(p is None or fits(p, t) for p, t in zip(produced, slots_t, strict=True)):
            return {e.source: i for i, e in enumerate(sources)}
        # Not in order: match each upstream to the one slot its output fits.
        result: dict[str, int] = {}
        for e, p in zip(sources, produced, strict=True):
            options = [i for i, t in enumerate(slots_t) if p is not None and fits(p, t) and i not in result.values()]
            if len(options) != 1:
                raise DefinitionError(
                    f"agent {a.name!r}: converge inputs do not line up: {e.source!r} outputs "
                    f"{type_name(p) if p is not None else 'an unannotated map result'}, and the input contract "
                    f"{self._tn(slots_t)} has {'no' if not options else 'more than one'} place for it"
                )
            result[e.source] = options[0]
        return result

    def _check_edge(self, e: Edge) -> None:
        target = self.specs[e.target]
        produced = self._produced(e)
        if produced is None:
            return  # a map without a return annotation: checked at run time
        if target.kind == "converge":
            accepted = target.slot_type(target.slots[e.source])
        elif target.kind == "gather":
            accepted = list_item_type(target.input_type)
        else:
            accepted = target.input_type
        if not fits(produced, accepted):
            hint = " (use map= to convert it" + (", or each=True to send the items one by one)" if list_item_type(produced) is not None else ")")
            raise DefinitionError(
                f"agent {e.target!r} reacts to {e.source!r}, but {e.source!r} outputs {type_name(produced)} "
                f"and {e.target!r} accepts {type_name(accepted)}{hint}"
            )

    def _check_loops(self) -> None:
        unguarded: dict[str, list[str]] = {n: [] for n in self.agents}
        for e in self.edges:
            if e.when is None:
                unguarded[e.source].append(e.target)
        state: dict[str, int] = {}

        def visit(n: str, path: list[str]) -> None:
            state[n] = 1
            for m in unguarded[n]:
                if state.get(m) == 1:
                    cycle = path[path.index(m):] + [m] if m in path else [n, m]
                    raise DefinitionError(
                        f"agents {' -> '.join(cycle)} form a loop with no when= condition, so it would never "
                        "stop; guard one of its edges with when="
                    )
                if m not in state:
                    visit(m, path + [m])
            state[n] = 2

        for n in self.agents:
            if n not in state:
                visit(n, [n])

    def _check_reachable(self) -> None:
        # Agents with no edges that are not entries receive only ctx.send/ctx.call messages.
        reached = self._reachable({s.name for s in self.entries} | {n for n, a in self.agents.items() if not a.edges})
        missing = sorted(set(self.agents) - reached)
        if missing:
            raise DefinitionError(
                f"agent(s) {', '.join(map(repr, missing))} can never run: nothing that starts from an entry agent "
                f"({', '.join(repr(s.name) for s in self.entries)}) leads to them"
            )

    def _reachable(self, start: set[str]) -> set[str]:
        reached = set(start)
        changed = True
        while changed:
            changed = False
            for name, a in self.agents.items():
                if name in reached:
                    continue
                groups: dict[int, list[str]] = {}
                for e in a.edges:
                    groups.setdefault(e.group, []).append(e.source)
                if any(all(s in reached for s in srcs) for srcs in groups.values()):
                    reached.add(name)
                    changed = True
        return reached

    def _fingerprint(self) -> str:
        parts = [f"{s.name}:{s.kind}:{self._tn(s.input_type)}->{type_name(s.output_type)}" for s in self.specs.values()]
        parts += [f"{e.source}>{e.target}#{e.group}:{int(e.each)}" for e in self.edges]
        return hashlib.blake2b("\n".join(sorted(parts)).encode(), digest_size=8).hexdigest()

