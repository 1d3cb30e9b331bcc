"""Deterministic simulation of the run engine (``roost._engine``), in the spirit of FoundationDB's
simulator: random apps, a simulated backend that plays every activation, random schedules with
duplicate deliveries and crashes, and a small reference interpreter to compare every run with.

Pieces:

* ``AppDef``/``app_defs()``: a random app as plain data (agents, roles, edges), built from blocks
  (chain, converge, each+gather, nested each, a list agent run twice, loop, approval, list over a
  plain edge, orchestrators that ``ctx.send``/``ctx.call``); ``build()`` turns it into a
  ``CompiledApp`` with the public API.
* ``outcome()``/``messages()``/``approves()``: what the simulated agents do, a pure function of
  (agent, args): the engine never runs agent code, the simulator plays the backend.
* ``Sim``: the backend. Keeps the persisted event log (JSON), lets a schedule pick the next step
  (finish an activation, deliver a message, resolve an approval, re-deliver an old event, crash and
  rebuild from the log, cancel), and checks its own view against ``pending()``/``waiting()``.
* ``Reference``: an obviously-correct recursive interpreter of the same semantics.
* ``check_run()``: compares a simulated run with the reference and with a canonical run, and
  checks the structural invariants (ids issued once, gathers complete/ordered/unmixed, converge
  fired once per key, the log replays to the same commands).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from hypothesis import strategies as st
from pydantic import BaseModel

from roost import Agent, agent
from roost._codec import revive
from roost._engine import (
    AbortActivations,
    Activation,
    ActivationFinished,
    AwaitApproval,
    CancelRequested,
    Command,
    DeliverReply,
    ErrorInfo,
    Event,
    FinishRun,
    MessageSent,
    PromiseResolved,
    Reply,
    RunEngine,
    RunStarted,
    StartActivation,
    decode,
    encode,
)
from roost._engine._plan import closers as plan_closers
from roost._graph import CompiledApp
from roost.agent import Edge

MOD = 50
"""Numbers produced by the simulated agents are in ``range(MOD)`` (loops add to them)."""


class Num(BaseModel):
    n: int


Nums = list[Num]


def stable_hash(*parts: object) -> int:
    """A hash of JSON-able parts that is the same in every process (unlike ``hash()``)."""
    data = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


def ref(entry: Any) -> tuple[str, int, int]:
    """(batch id, index, size) of one entry of an activation's batch path (a ``BatchRef``)."""
    if isinstance(entry, tuple):
        return entry[0], entry[1], entry[2]
    return entry.id, entry.index, entry.size  # a BatchRef object rather than a tuple


def shape(batch: Sequence[Any]) -> tuple[tuple[int, int], ...]:
    """(index, size) per level of a batch path."""
    return tuple(ref(b)[1:] for b in batch)


def canon(value: Any) -> str:
    """A canonical text of a JSON-able value (tuples and lists alike)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# -- app definitions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Cond:
    """A ``when=`` filter: ``drop`` drops n % a == b, ``lt``/``ge`` compare with a, ``never`` drops all,
    ``boom`` keeps all but raises when n % a == 0 (the engine fails the run at the routing agent)."""

    op: str
    a: int = 0
    b: int = 0

    def __call__(self, x: Num) -> bool:
        if self.op == "drop":
            return x.n % self.a != self.b
        if self.op == "lt":
            return x.n < self.a
        if self.op == "ge":
            return x.n >= self.a
        if self.op == "boom":
            if x.n % self.a == 0:
                raise ValueError(f"boom on {x.n}")
            return True
        return False

    def __repr__(self) -> str:
        return {"drop": f"n%{self.a}!={self.b}", "lt": f"n<{self.a}", "ge": f"n>={self.a}",
                "boom": f"boom%{self.a}"}.get(self.op, "never")


def mapper(salt: int) -> Callable[[Num], Num]:
    """A ``map=`` function with a return annotation (so the wiring checks its type)."""

    def remap(x: Num) -> Num:
        return Num(n=(x.n * 3 + salt) % MOD)

    remap.__qualname__ = remap.__name__ = f"map{salt}"
    return remap


@dataclass(frozen=True)
class Group:
    """One ``reacts_to`` call: several sources make a converge."""

    sources: tuple[str, ...]
    when: Cond | None = None
    map_salt: int | None = None
    each: bool = False


@dataclass
class AgentDef:
    name: str
    role: str
    """entry | num | list | gather | whole | converge | loop | orch | leaf"""
    groups: list[Group] = field(default_factory=list)
    arity: int = 1
    approval: bool = False
    fail_mod: int = 0
    """Fails when a hash of its args is divisible by it (0: never fails)."""
    step: int = 0
    """loop: adds this to n."""
    messages: tuple[tuple[str, str], ...] = ()
    """orch: (target, "send" | "call") in program order."""


@dataclass
class AppDef:
    agents: list[AgentDef]
    entry: str
    entry_n: int
    max_activations: int
    closers: dict[str, tuple[str, ...]]
    """list agent -> the gathering agents expected to close the batches of its each=True edge."""
    order: tuple[int, ...] = ()
    """The order agents are given to CompiledApp (a permutation of ``agents``)."""

    def by_name(self) -> dict[str, AgentDef]:
        return {a.name: a for a in self.agents}

    def __repr__(self) -> str:
        lines = [f"AppDef(entry={self.entry}({self.entry_n}), max_activations={self.max_activations}, "
                 f"closers={self.closers}, order={self.order})"]
        for a in self.agents:
            extra = [f"fail%{a.fail_mod}"] * bool(a.fail_mod) + ["approval"] * a.approval
            extra += [f"step={a.step}"] * bool(a.step) + [f"msgs={list(a.messages)}"] * bool(a.messages)
            groups = [f"{'+'.join(g.sources)}" + f"[when {g.when!r}]" * (g.when is not None)
                      + f"[map{g.map_salt}]" * (g.map_salt is not None) + "[each]" * g.each for g in a.groups]
            lines.append(f"  {a.name}: {a.role} <- {', '.join(groups) or '-'} {' '.join(extra)}")
        return "\n".join(lines)


_TYPES: dict[str, tuple[Any, Any]] = {
    "entry": (Num, Num), "num": (Num, Num), "loop": (Num, Num), "orch": (Num, Num), "leaf": (Num, Num),
    "list": (Num, Nums), "gather": (Nums, Num), "whole": (Nums, Num),
}
_KINDS = {"gather": "gather", "converge": "converge"}


def _unused(*args: Any) -> Any:
    raise AssertionError("the engine never runs agent code")


def build(d: AppDef) -> CompiledApp:
    """The CompiledApp of a definition, wired with the public API."""
    agents: dict[str, Agent] = {}
    for ad in d.agents:
        inp, out = _TYPES.get(ad.role, ((Num,) * ad.arity, Num))
        a = agent(ad.name).contracts(input=inp, output=out).engine(_unused)
        if ad.approval:
            a.needs_approval()
        agents[ad.name] = a
    for ad in d.agents:
        for g in ad.groups:
            agents[ad.name].reacts_to(*(agents[s] for s in g.sources), when=g.when,
                                      map=mapper(g.map_salt) if g.map_salt is not None else None, each=g.each)
    order = d.order or tuple(range(len(d.agents)))
    app = CompiledApp("sim", [agents[d.agents[i].name] for i in order], d.max_activations)
    for ad in d.agents:  # the wiring compiled as the definition means it
        assert app.specs[ad.name].kind == _KINDS.get(ad.role, "single"), (ad.name, app.specs[ad.name].kind)
    plan = plan_closers(app)
    for source, found in plan.items():
        assert any(e.each for e in app.out_edges[source])
        assert found == d.closers.get(source, ()), (source, found, d.closers.get(source))
    return app


class _Builder:
    """Draws an app block by block; keeps it small and confluent (see ``pipeline``)."""

    def __init__(self, draw: st.DrawFn, *, failures: bool, batches: bool) -> None:
        self.draw = draw
        self.failures = failures
        self.batches = batches
        self.agents: list[AgentDef] = []
        self.closers: dict[str, tuple[str, ...]] = {}

    def new(self, role: str, *groups: Group, arity: int = 1, can_fail: bool = True, **kw: Any) -> str:
        name = f"{role}{len(self.agents)}"
        fail = self.draw(st.sampled_from([0, 0, 0, 0, 0, 0, 4, 9])) if self.failures and can_fail else 0
        self.agents.append(AgentDef(name, role, list(groups), arity, fail_mod=fail, **kw))
        return name

    def when(self, *, each: bool = False) -> Cond | None:
        options: list[Cond | None] = [None, None, None, None, Cond("drop", 2, 1), Cond("drop", 3, 0), Cond("lt", 40)]
        if each:
            options.append(Cond("never"))
        if self.failures:
            options.append(Cond("boom", 11))
        return self.draw(st.sampled_from(options))

    def map_salt(self) -> int | None:
        return self.draw(st.sampled_from([None, None, 1, 7]))

    def edge(self, src: str, *, each: bool = False) -> Group:
        return Group((src,), self.when(each=each), self.map_salt(), each)

    def pipeline(self, src: str, depth: int, multi: bool, blocks: int) -> str:
        """Blocks one after the other from ``src``; returns the agent whose output ends them.

        ``multi``: ``src`` may run more than once on the same batch item (after a list agent run
        twice); then no converge follows (which of two values reaches a converge first is a race)
        and, inside a batch, nothing may contribute twice to one gather for one item (the order of
        two contributions of one item is by activation id, which the reference cannot predict)."""
        for _ in range(blocks):
            if len(self.agents) > 22:
                break
            kinds = []  # the interesting blocks first (and twice): Hypothesis leans to the first ones
            if depth < 2 and self.batches:
                kinds += ["each", "each"]
            if depth == 0 and self.batches:
                kinds.append("double")
            if not multi:
                kinds += ["converge", "converge", "loops"]
            kinds += ["orch", "loop", "approve", "chain", "whole"]
            kind = self.draw(st.sampled_from(kinds))
            src, multi = getattr(self, f"_{kind}")(src, depth, multi)
        return src

    def _chain(self, src: str, depth: int, multi: bool) -> tuple[str, bool]:
        return self.new("num", self.edge(src)), multi

    def _approve(self, src: str, depth: int, multi: bool) -> tuple[str, bool]:
        return self.new("num", self.edge(src), approval=True), multi

    def _converge(self, src: str, depth: int, multi: bool) -> tuple[str, bool]:
        k = self.draw(st.integers(2, 3))
        ups = [src] if self.draw(st.booleans()) else []
        ups += [self.new("num", self.edge(src)) for _ in range(k - len(ups))]
        when = self.draw(st.sampled_from([None, None, Cond("lt", 40)]))
        return self.new("converge", Group(tuple(ups), when), arity=k), multi

    def _loop(self, src: str, depth: int, multi: bool) -> tuple[str, bool]:
        k = self.draw(st.integers(0, 40))
        loop = self.new("loop", Group((src,)), step=self.draw(st.integers(3, 8)))
        self.agents[-1].groups.append(Group((loop,), Cond("lt", k)))
        return self.new("num", Group((loop,), Cond("ge", k))), multi

    def _loops(self, src: str, depth: int, multi: bool) -> tuple[str, bool]:
        """Two guarded self-loops converged: their first outputs meet, later ones are ignored."""
        ups = []
        for _ in range(2):
            ups.append(self.new("loop", Group((src,)), step=self.draw(st.integers(3, 8))))
            self.agents[-1].groups.append(Group((ups[-1],), Cond("lt", self.draw(st.integers(0, 40)))))
        return self.new("converge", Group(tuple(ups)), arity=2), multi

    def _whole(self, src: str, depth: int, multi: bool) -> tuple[str, bool]:
        lst = self.new("list", self.edge(src))
        return self.new("whole", Group((lst,))), multi

    def _orch(self, src: str, depth: int, multi: bool) -> tuple[str, bool]:
        msgs: list[tuple[str, str]] = []
        for _ in range(self.draw(st.integers(1, 3))):
            kind = self.draw(st.sampled_from(["send", "call"]))
            reuse = [t for t, _ in msgs if self.by_role(t) == "leaf"]
            if reuse and self.draw(st.integers(0, 3)) == 0:
                msgs.append((reuse[0], kind))
                continue
            if kind == "call" and self.draw(st.integers(0, 3)) == 0:  # a nested orchestrator
                leaf = self.new("leaf")
                inner = tuple((leaf, self.draw(st.sampled_from(["send", "call"]))) for _ in range(2))
                msgs.append((self.new("orch", messages=inner), kind))
                continue
            target = self.new("leaf", approval=kind == "call" and self.draw(st.integers(0, 3)) == 0)
            if kind == "send" and self.draw(st.booleans()):
                self.new("num", Group((target,)))
            msgs.append((target, kind))
        return self.new("orch", self.edge(src), messages=tuple(msgs)), multi

    def by_role(self, name: str) -> str:
        return next(a.role for a in self.agents if a.name == name)

    def _each(self, src: str, depth: int, multi: bool) -> tuple[str, bool]:
        lst = self.new("list", self.edge(src))
        return self._fan(lst, depth), multi

    def _double(self, src: str, depth: int, multi: bool) -> tuple[str, bool]:
        p = self.new("num", Group((src,)))
        q = self.new("num", Group((src,)), approval=self.draw(st.integers(0, 3)) == 0)
        lst = self.new("list", Group((p,)))
        self.agents[-1].groups.append(Group((q,)))
        return self._fan(lst, depth), True

    def _fan(self, lst: str, depth: int) -> str:
        """``lst`` -> each=True -> workers (maybe a nested pipeline) -> one or two gathering agents."""
        worker = self.new("num", self.edge(lst, each=True), approval=self.draw(st.integers(0, 5)) == 0)
        last = worker
        if self.draw(st.integers(0, 3)) > 0:
            last = self.pipeline(worker, depth + 1, False, self.draw(st.integers(1, 2)))
        gathers = [self.new("gather", Group((last,), self.when()))]
        if self.draw(st.integers(0, 3)) == 0:
            gathers.append(self.new("gather", Group((last,))))
        if self.draw(st.integers(0, 3)) == 0:
            self.new("whole", Group((lst,)))  # the same list, whole, over a plain edge
        self.closers[lst] = tuple(sorted(gathers))
        return gathers[0]


NO_LIMIT = 1_000_000


@st.composite
def app_defs(draw: st.DrawFn, *, limits: bool = False, batches: bool = True) -> AppDef:
    """A random small app (about 3 to 25 agents) from the blocks of ``_Builder``. ``limits``: a
    small ``max_activations`` (2 to 40) that many runs exceed; ``batches``: each=True blocks."""
    b = _Builder(draw, failures=draw(st.integers(0, 2)) == 0, batches=batches)
    entry = b.new("entry")
    b.pipeline(entry, 0, False, draw(st.integers(2, 5)))
    limit = draw(st.integers(2, 40)) if limits else NO_LIMIT
    order = tuple(draw(st.permutations(range(len(b.agents)))))
    return AppDef(b.agents, entry, draw(st.integers(0, MOD - 1)), limit, b.closers, order)


# -- the simulated agents -------------------------------------------------------------------


def messages(ad: AgentDef, args: Sequence[Any]) -> list[tuple[str, str, str, Any]]:
    """An orchestrator's ``ctx.send``/``ctx.call`` messages: (position, target, kind, payload)."""
    return [(str(i), target, kind, {"n": stable_hash(ad.name, list(args), "msg", i) % MOD})
            for i, (target, kind) in enumerate(ad.messages)]


def outcome(ad: AgentDef, args: Sequence[Any], replies: Sequence[tuple[str, Any]] = ()) -> tuple[str, Any]:
    """("failed", None) or ("completed", output): a pure function of the agent, its args and (for an
    orchestrator) the replies to its calls. Order-sensitive in list args, so a misordered gather shows."""
    a = list(args)
    if ad.fail_mod and stable_hash(ad.name, a, list(replies), "fail") % ad.fail_mod == 0:
        return "failed", None
    if ad.role == "loop":
        return "completed", {"n": a[0]["n"] + ad.step}
    if ad.role == "list":
        size = (0, 1, 2, 3, 2, 3)[stable_hash(ad.name, a, "len") % 6]
        return "completed", [{"n": stable_hash(ad.name, a, i) % MOD} for i in range(size)]
    return "completed", {"n": stable_hash(ad.name, a, list(replies)) % MOD}


def approves(agent_name: str, args: Sequence[Any]) -> bool:
    """The simulated human's decision: a function of what it is shown (agent and inputs)."""
    return stable_hash(agent_name, list(args), "approve") % 4 != 0


def approval_value(agent_name: str, args: Sequence[Any]) -> Any:
    """The decision in one of the spellings ``is_approved`` reads."""
    ok = approves(agent_name, args)
    spelling = stable_hash(agent_name, list(args), "spelling") % 3
    return [ok, {"approved": ok}, "yes" if ok else "no"][spelling]


# -- the reference interpreter --------------------------------------------------------------

Path = tuple[tuple[int, int, int], ...]
"""The reference's batch path: (batch number, index, size) per level."""
Record = tuple[str, str, str, tuple[tuple[int, int], ...], str, str]
"""(agent, kind, args, batch shape ((index, size) per level), finish status, output)."""


class Reference:
    """Runs an app depth first, recursively, with no events, no ids and no concurrency.

    An activation's output is delivered whole (converge slots fill in causal order: a loop's first
    output before its second), then what it started runs, depth first. A batch is processed entirely
    (every item and everything downstream inside it) before its gathering agents run, so "a gather
    sees every item of its batch, in order, and only those" is true by construction. Failures do not
    stop it: it computes the full run, from which a failed run's activations must be a subset, and
    its error one of the failures."""

    def __init__(self, d: AppDef, app: CompiledApp) -> None:
        self.d = d
        self.defs = d.by_name()
        self.app = app
        self.records: list[Record] = []
        self.failing: set[tuple[str, str]] = set()
        """(agent, error type) of every failure of the full run (its activations or its routing)."""
        self.count = 0
        self._fired: set[tuple[str, tuple[tuple[int, int], ...]]] = set()
        self._slots: dict[tuple[str, tuple[tuple[int, int], ...]], dict[int, Any]] = {}
        self._batches: dict[int, dict[str, list[tuple[int, Any]]]] = {}
        self._uid = 0

    @property
    def over_limit(self) -> bool:
        return self.count > self.d.max_activations

    def run(self) -> Reference:
        self.activate(self.d.entry, "entry", ({"n": self.d.entry_n},), ())
        return self

    def activate(self, name: str, kind: str, args: tuple[Any, ...], path: Path) -> tuple[str, Any]:
        self.count += 1
        assert self.count < 20_000, "the reference ran away: a generator bug"
        ad = self.defs[name]
        replies: list[tuple[str, Any]] = []
        for _, target, mkind, payload in messages(ad, args):
            reply = self.activate(target, mkind, (payload,), ())
            if mkind == "call":
                replies.append(reply)
        status, output = outcome(ad, args, replies)
        self.records.append((name, kind, canon(args), tuple((i, n) for _, i, n in path), status, canon(output)))
        if status == "failed":
            if kind != "call":  # a failed call is its caller's business (it waits for the reply)
                self.failing.add((name, "SimError"))
            return "failed", None
        if ad.approval and not approves(name, args):
            return "rejected", None
        if kind != "call":  # a call's output is its reply, not routed
            self.route(name, output, path)
        return "completed", output

    def route(self, name: str, output: Any, path: Path) -> None:
        typed = revive(output, self.app.specs[name].output_type)
        plan: list[tuple[Edge, int | None, list[tuple[Path, Any]]]] = []
        try:  # every when=/map= first: one that raises fails the run and routes nothing
            for edge in self.app.out_edges[name]:
                uid, values, paths = None, [typed], [path]
                if edge.each:
                    self._uid += 1
                    uid, values = self._uid, list(typed)
                    paths = [path + ((uid, i, len(values)),) for i in range(len(values))]
                passed = [(p, pydantic_core.to_jsonable_python(edge.map(v) if edge.map is not None else v))
                          for v, p in zip(values, paths, strict=True) if edge.when is None or edge.when(v)]
                plan.append((edge, uid, passed))
        except ValueError:
            self.failing.add((name, "TerminalError"))
            return
        # Deliver all of it first (converge slots fill now, in causal order), then run what it started,
        # then close the batches it opened: everything inside them has run by then.
        runs: list[tuple[str, str, tuple[Any, ...], Path]] = []
        opened: list[int] = []
        for edge, uid, passed in plan:
            if uid is not None:
                self._batches[uid] = {}
                opened.append(uid)
            for p, payload in passed:
                self.deliver(edge.source, edge.target, payload, p, runs)
        for run in runs:
            self.activate(*run)
        for uid in opened:
            got = self._batches.pop(uid)
            for g in sorted(set(self.d.closers.get(name, ())) | set(got)):
                indexes = [i for i, _ in got.get(g, [])]
                assert len(set(indexes)) == len(indexes), "two contributions of one item: a generator bug"
                self.activate(g, "gather", ([p for _, p in sorted(got.get(g, []), key=lambda ip: ip[0])],), path)

    def deliver(self, source: str, target: str, payload: Any, path: Path,
                runs: list[tuple[str, str, tuple[Any, ...], Path]]) -> None:
        spec = self.app.specs[target]
        if spec.kind == "single":
            runs.append((target, "edge", (payload,), path))
        elif spec.kind == "converge":
            key = (target, tuple((uid, i) for uid, i, _ in path))
            if key in self._fired:
                return
            slots = self._slots.setdefault(key, {})
            slots.setdefault(spec.slots[source], payload)  # the first value of each upstream wins
            if len(slots) == spec.arity:
                self._fired.add(key)
                del self._slots[key]
                runs.append((target, "converge", tuple(slots[i] for i in range(spec.arity)), path))
        elif not path:
            runs.append((target, "gather", ([payload],), ()))
        else:
            uid, index, _ = path[-1]
            self._batches[uid].setdefault(target, []).append((index, payload))


# -- the simulated backend ------------------------------------------------------------------


@dataclass
class Job:
    """A started activation as the backend runs it: how far its program got, whether it was aborted."""

    act: Activation
    sent: int = 0
    aborted: bool = False


class Chooser:
    """The schedule: an explicit prefix of choices (what Hypothesis shrinks), then a seeded PRNG.
    With neither, always 0: the canonical order (oldest work first, no chaos)."""

    def __init__(self, prefix: Sequence[int] = (), seed: int | None = None) -> None:
        self.prefix = list(prefix)
        self.rng = random.Random(seed) if seed is not None else None
        self.i = 0

    def __call__(self) -> int:
        self.i += 1
        if self.i <= len(self.prefix):
            return self.prefix[self.i - 1]
        return self.rng.randrange(1 << 16) if self.rng is not None else 0


TOLERATE_STALE_ABORT = False
"""Known engine bug (test_engine_sim.py::test_abort_lists_only_running_activations): when an
activation's own end fails the run (it failed, its routing raised, or what it started crossed the
limit), AbortActivations also lists that activation, which has just finished. With this set, the
simulator lets exactly that one id through (and counts it in ``Sim.stale_aborts``), so the property
tests keep checking everything else; set it to False once the bug is fixed."""


class Stuck(AssertionError):
    """The engine waits, but nothing it waits on can happen."""


class Sim:
    """Plays the backend of one run; ``run()`` drives it to FinishRun."""

    MAX_STEPS = 20_000
    MAX_CRASHES = 5

    def __init__(self, d: AppDef, app: CompiledApp, choose: Chooser | None = None, *, chaos: bool = False,
                 cancel: bool = False, run_id: str = "run-1") -> None:
        self.d, self.app, self.run_id = d, app, run_id
        self.defs = d.by_name()
        self.choose = choose or Chooser()
        self.chaos, self.cancel = chaos, cancel
        self.engine = RunEngine(app, run_id)
        self.log: list[dict[str, Any]] = []
        """The persisted events, as JSON text would give them back."""
        self.commands: list[Command] = []
        """Every command the live engines returned, in order (a rebuilt engine's replay excluded)."""
        self.started: dict[str, Activation] = {}
        self.jobs: dict[str, Job] = {}
        self.approvals: dict[str, str] = {}
        self.approval_names: set[str] = set()
        self.aborted: set[str] = set()
        """Activations the engine aborted (their outputs may rest on cancelled replies)."""
        self.replies: dict[str, Reply] = {}
        self.finish: FinishRun | None = None
        self.steps = self.crashes = self.duplicates = self.cancelled = self.stale_aborts = 0
        self._finishing: str | None = None

    # -- driving ----------------------------------------------------------------------------

    def run(self) -> Sim:
        self.deliver(RunStarted(((self.d.entry, {"n": self.d.entry_n}),)))
        while self.finish is None:
            self.steps += 1
            assert self.steps < self.MAX_STEPS, "the run did not finish"
            self.step()
            self.check_outstanding()
        assert not self.jobs and not self.approvals, "FinishRun with work outstanding"
        return self

    def work(self) -> list[tuple[str, str]]:
        """What can happen next: finish a job, a job's next message, an approval's decision."""
        acts: list[tuple[str, str]] = []
        for aid, job in self.jobs.items():
            if job.aborted:
                acts.append(("finish", aid))
                continue
            msgs = self.program(job)
            if not self.replied(job, msgs[:job.sent]):
                continue  # blocked in ctx.call, waiting for its reply
            acts.append(("send" if job.sent < len(msgs) else "finish", aid))
        acts += [("resolve", name) for name in self.approvals]
        return acts

    def step(self) -> None:
        r = self.choose()
        roll = r % 100
        if self.chaos and roll < 3 and self.crashes < self.MAX_CRASHES:
            return self.crash()
        if self.chaos and roll < 9 and self.log:
            return self.duplicate(self.choose())
        if self.cancel and roll == 99:
            self.cancelled += 1
            self.deliver(CancelRequested("sim"))
            return None
        acts = self.work()
        if not acts:
            raise Stuck(f"nothing can happen, but the run is {self.engine.status}: pending "
                        f"{[a.id for a in self.engine.pending()]}, waiting {self.engine.waiting()}")
        what, which = acts[(r // 100) % len(acts)]
        if what == "finish":
            self.finish_job(which)
        elif what == "send":
            self.send_next(which)
        else:
            self.resolve(which)
        return None

    def program(self, job: Job) -> list[tuple[str, str, str, Any]]:
        return messages(self.defs[job.act.agent], job.act.args)

    def replied(self, job: Job, msgs: Sequence[tuple[str, str, str, Any]]) -> bool:
        return all(f"{job.act.id}/{pos}" in self.replies for pos, _, kind, _ in msgs if kind == "call")

    def finish_job(self, aid: str) -> None:
        job = self.jobs.pop(aid)
        act, ad = job.act, self.defs[job.act.agent]
        msgs = self.program(job)
        done = job.sent == len(msgs) and self.replied(job, msgs)
        if job.aborted and (not done or self.choose() % 2 == 0):
            self.deliver(ActivationFinished(aid, "cancelled"))
            return
        replies = [self.replies[f"{aid}/{pos}"] for pos, _, kind, _ in msgs if kind == "call"]
        status, output = outcome(ad, act.args, [(r.status, r.output) for r in replies])
        if status == "failed":
            error = ErrorInfo(act.agent, act.agent, 3, "SimError", f"{act.agent} fails on {canon(act.args)}")
            self.deliver(ActivationFinished(aid, "failed", error=error))
        else:
            self.deliver(ActivationFinished(aid, "completed", output))

    def send_next(self, aid: str) -> None:
        job = self.jobs[aid]
        pos, target, kind, payload = self.program(job)[job.sent]
        job.sent += 1
        deliver_at = 1.5e9 if stable_hash(aid, pos) % 5 == 0 else None
        event = MessageSent(aid, pos, target, "call" if kind == "call" else "send", payload, deliver_at)
        again = encode(event) in self.log  # a restarted orchestrator replays its messages
        cmds = self.deliver(event)
        assert not (again and cmds), f"a replayed message led to commands {cmds}"

    def resolve(self, name: str) -> None:
        act = self.started[self.approvals.pop(name)]
        self.deliver(PromiseResolved(name, approval_value(act.agent, act.args)), finishing=act.id)

    def duplicate(self, r: int) -> None:
        self.duplicates += 1
        event = decode(self.log[r % len(self.log)])
        cmds = self.deliver(event)
        assert cmds == [], f"re-delivering {event} led to {cmds}"

    def crash(self) -> None:
        """Drop the engine and the backend's memory; rebuild both from the persisted log."""
        self.crashes += 1
        old = self.engine
        engine = RunEngine(self.app, self.run_id)
        replayed: list[Command] = []
        for data in self.log:
            replayed += engine.handle(decode(data))
        assert replayed == self.commands, "the log replays to other commands"
        assert engine.pending() == old.pending()
        assert engine.waiting() == old.waiting()
        assert (engine.status, engine.ending, engine.count, engine.open) == (old.status, old.ending, old.count,
                                                                             old.open)
        assert engine.replies == old.replies
        self.engine = engine
        names = {c.name: c.activation for c in replayed if isinstance(c, AwaitApproval)}
        self.jobs = {a.id: Job(a, aborted=engine.ending) for a in engine.pending()}
        if engine.ending:
            self.aborted.update(self.jobs)
        self.approvals = {name: names[name] for name in engine.waiting()}
        self.replies = dict(engine.replies)

    # -- events and commands ----------------------------------------------------------------

    def deliver(self, event: Event, finishing: str | None = None) -> list[Command]:
        """Persist ``event``, hand it to the engine, carry out the commands. ``finishing``: the
        activation whose output this event decides (an ActivationFinished's own, or an approval's)."""
        data = json.loads(json.dumps(encode(event)))
        assert decode(data) == event, f"{event} does not survive encode/decode"
        self.log.append(data)
        cmds = self.engine.handle(decode(data))
        self.commands += cmds
        self._finishing = finishing or (event.activation if isinstance(event, ActivationFinished) else None)
        for c in cmds:
            self.apply(c)
        if self.engine.ending:
            self.approvals.clear()  # the engine dropped them (the run failed or was cancelled)
        return cmds

    def apply(self, c: Command) -> None:
        if isinstance(c, StartActivation):
            a = c.activation
            assert a.id not in self.started, f"activation id {a.id} issued twice"
            self.started[a.id] = a
            self.jobs[a.id] = Job(a)
        elif isinstance(c, AwaitApproval):
            assert c.name not in self.approval_names, f"approval name {c.name} issued twice"
            assert c.activation in self.started and c.activation not in self.jobs
            self.approval_names.add(c.name)
            self.approvals[c.name] = c.activation
        elif isinstance(c, DeliverReply):
            assert c.caller in self.jobs, f"a reply to {c.caller}, which is not running"
            assert c.key.startswith(c.caller + "/") and c.key not in self.replies
            self.replies[c.key] = c.reply
        elif isinstance(c, AbortActivations):
            for aid in c.ids:
                if TOLERATE_STALE_ABORT and aid == self._finishing and aid not in self.jobs:
                    self.stale_aborts += 1
                    continue
                assert aid in self.jobs, f"abort {aid}, which is not running"
                self.jobs[aid].aborted = True
                self.aborted.add(aid)
        else:
            assert self.finish is None, "FinishRun twice"
            self.finish = c

    def check_outstanding(self) -> None:
        """The backend's view of outstanding work is the engine's."""
        assert sorted(a.id for a in self.engine.pending()) == sorted(self.jobs)
        assert sorted(self.engine.waiting()) == sorted(self.approvals)

    # -- results ----------------------------------------------------------------------------

    def results(self) -> dict[str, ActivationFinished]:
        """The accepted finish of every activation: the first in the log (later ones are duplicates)."""
        out: dict[str, ActivationFinished] = {}
        for data in self.log:
            event = decode(data)
            if isinstance(event, ActivationFinished):
                out.setdefault(event.activation, event)
        return out

    def records(self) -> dict[str, Record]:
        res = self.results()
        out: dict[str, Record] = {}
        for aid, a in self.started.items():
            fin = res[aid]
            out[aid] = (a.agent, a.kind, canon(a.args), shape(a.batch), fin.status,
                        canon(fin.output))
        return out


# -- checks ---------------------------------------------------------------------------------


def _key(r: Record) -> tuple[str, str, str, tuple[tuple[int, int], ...]]:
    return r[:4]


def check_run(sim: Sim, ref: Reference, canonical: Sim) -> None:
    """Everything a simulated run must satisfy (raises AssertionError with the reason)."""
    d, app = sim.d, sim.app
    finish = sim.finish
    assert finish is not None
    assert finish.status == sim.engine.status

    # The persisted log replays to the same commands and the same end.
    engine = RunEngine(app, sim.run_id)
    replayed: list[Command] = []
    for data in sim.log:
        replayed += engine.handle(decode(data))
    assert replayed == sim.commands, "the log replays to other commands"
    assert engine.status == finish.status and not engine.pending() and not engine.waiting()

    records = sim.records()
    assert set(sim.results()) == set(sim.started), "activations finished that were never started"
    mine = Counter(records.values())
    theirs = Counter(ref.records)

    # Status and error, against the reference's full run.
    if finish.status == "completed":
        assert not ref.failing and not ref.over_limit, f"completed, but the reference fails ({ref.failing})"
        assert finish.error is None
        assert mine == theirs, f"activations differ from the reference:\n+{mine - theirs}\n-{theirs - mine}"
    elif finish.status == "failed":
        assert finish.error is not None
        if finish.error.error_type == "ActivationLimitError":
            assert ref.over_limit, f"ActivationLimitError, but the full run has {ref.count} activations"
            assert sim.engine.count == d.max_activations + 1
        else:
            failure = (finish.error.agent, finish.error.error_type)
            assert failure in ref.failing, f"failed with {failure}, not one of the full run's {ref.failing}"
    else:
        assert finish.status == "cancelled" and sim.cancelled, finish
    if finish.status != "completed":
        done = Counter(r for aid, r in records.items() if r[4] != "cancelled" and aid not in sim.aborted)
        assert done <= theirs, f"activations the full run does not have: {done - theirs}"
        assert Counter(_key(r) for r in records.values()) <= Counter(_key(r) for r in ref.records)
        if not ref.failing and not ref.over_limit:
            assert finish.status == "cancelled"

    check_structure(sim, records)

    # Ids name the same activation whatever the order: against a canonical (in order, no chaos) run.
    # (Except a converge's ``cause``: the upstream activation that arrived last, a race by nature.)
    for aid in set(sim.started) & set(canonical.started):
        mine_a, canon_a = sim.started[aid], canonical.started[aid]
        if mine_a.kind == "converge":
            canon_a = dataclasses.replace(canon_a, cause=mine_a.cause)
        assert mine_a == canon_a, f"{aid} is another activation in another order"
    if finish.status == "completed" and canonical.finish is not None and canonical.finish.status == "completed":
        assert records == canonical.records()


def check_structure(sim: Sim, records: dict[str, Record]) -> None:
    """Invariants read off the engine's own activations, without the reference."""
    app, defs = sim.app, sim.d.by_name()
    acts = sim.started
    res = sim.results()

    def routed(aid: str) -> bool:  # completed, and (if it needed approval) approved
        a = acts[aid]
        return res[aid].status == "completed" and (not defs[a.agent].approval or approves(a.agent, a.args))

    # Converge fires at most once per (agent, batch item path).
    fired = Counter((a.agent, tuple(ref(b)[:2] for b in a.batch)) for a in acts.values() if a.kind == "converge")
    assert all(n == 1 for n in fired.values()), f"a converge fired twice: {fired}"

    # Gathers: one per batch and closer; its items are exactly the batch's surviving contributions, in order.
    by_cause: dict[str, list[Activation]] = {}
    for a in acts.values():
        if a.kind == "gather":
            by_cause.setdefault(a.cause or "", []).append(a)
    for g_list in by_cause.values():
        assert len({g.agent for g in g_list}) == len(g_list), f"one batch gathered twice: {g_list}"
    for g in (a for a in acts.values() if a.kind == "gather"):
        source = acts[g.cause or ""]
        assert defs[source.agent].role == "list" and g.agent in sim.d.closers[source.agent]
        assert g.batch == source.batch
        (edge,) = app.agents[g.agent].edges
        contributors = sorted(
            (a for aid, a in acts.items()
             if a.agent == edge.source and a.batch[:-1] == g.batch and a.batch
             and ref(a.batch[-1])[0].startswith(source.id + "#") and routed(aid)),
            key=lambda a: ref(a.batch[-1])[1])
        indexes = [ref(a.batch[-1])[1] for a in contributors]
        assert len(set(indexes)) == len(indexes)
        items = []
        for a in contributors:
            value = revive(res[a.id].output, app.specs[a.agent].output_type)
            if edge.when is None or edge.when(value):
                items.append(pydantic_core.to_jsonable_python(edge.map(value) if edge.map else value))
        assert g.args == (items,), f"gather {g.id} got {g.args}, its batch holds {items}"
    if sim.finish is not None and sim.finish.status == "completed":
        for aid, a in acts.items():  # every batch of a routed list output was gathered by each closer
            if defs[a.agent].role == "list" and routed(aid):
                assert sorted(g.agent for g in by_cause.get(aid, [])) == sorted(sim.d.closers.get(a.agent, ()))
