"""Deterministic simulation testing of the run engine (FoundationDB simulator / TigerBeetle VOPR style).

Random apps (``_engine_sim.app_defs``) run under random schedules: activations finish in random
order, messages and approvals interleave with them, old events are re-delivered and the backend
crashes and rebuilds the engine from its persisted log. Every run is compared with a reference
interpreter (status, error, the multiset of activations and outputs) and with a canonical run
(ids), and checked for structural invariants (see ``_engine_sim.check_run``).

The number of examples is ``ROOST_SIM_EXAMPLES`` (default 2000, about 15 s on two cores), spread
over the property tests; ``ROOST_SIM_SEED`` explores another part of the space (the default is
derandomized and database-less, so CI runs the same examples every time). With
``ROOST_SIM_EXAMPLES`` set the per-test timeout is off. A long exploration (about 5 minutes):

    ROOST_SIM_EXAMPLES=40000 .venv/bin/pytest tests/unit/test_engine_sim.py -q --hypothesis-show-statistics

The fixed tests below are explicit event sequences for the cases that matter most, among them the
regressions this simulation found (the activation limit crossed while a batch is being routed;
an abort that listed the activation which had just finished).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from roost import Agent, agent
from roost._engine import (
    AbortActivations,
    Activation,
    ActivationFinished,
    AwaitApproval,
    Command,
    DeliverReply,
    ErrorInfo,
    Event,
    FinishRun,
    MessageSent,
    PromiseResolved,
    RunEngine,
    RunStarted,
    StartActivation,
    decode,
    encode,
)
from roost._graph import CompiledApp

from ._engine_sim import AppDef, Chooser, Num, Nums, Reference, Sim, app_defs, build, check_run, ref

EXAMPLES = int(os.environ.get("ROOST_SIM_EXAMPLES", "2000"))
SEED = os.environ.get("ROOST_SIM_SEED")


def _settings(share: float, *health: HealthCheck, **kw: Any) -> Callable[[Any], Any]:
    """Hypothesis settings for a property test that gets ``share`` of the example budget."""
    configured = settings(
        max_examples=max(1, int(EXAMPLES * share)), deadline=None, derandomize=SEED is None, database=None,
        print_blob=False, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, *health], **kw)

    def apply(fn: Any) -> Any:
        fn = configured(fn)
        if SEED is not None:
            fn = hypothesis_seed(int(SEED))(fn)
        return pytest.mark.timeout(0)(fn) if "ROOST_SIM_EXAMPLES" in os.environ else fn

    return apply


schedules = st.lists(st.integers(0, (1 << 16) - 1), max_size=80)
"""The first choices of a schedule (what Hypothesis shrinks); a seeded PRNG makes the rest."""


def simulate(d: AppDef, prefix: list[int], rng_seed: int, chaos: bool, cancel: bool) -> Sim:
    note(repr(d))
    app = build(d)
    ref = Reference(d, app).run()
    canonical = Sim(d, app).run()
    check_run(canonical, ref, canonical)
    sim = Sim(d, app, Chooser(prefix, rng_seed), chaos=chaos, cancel=cancel).run()
    note(f"{sim.steps} steps, {len(sim.started)} activations, {sim.crashes} crashes, {sim.duplicates} duplicates, "
         f"{sim.finish}")
    check_run(sim, ref, canonical)
    return sim


@_settings(0.7)
@given(d=app_defs(), prefix=schedules, rng_seed=st.integers(0, 2**32 - 1), chaos=st.integers(0, 3),
       cancel=st.integers(0, 9))
def test_random_apps_and_schedules_agree_with_the_reference(d: AppDef, prefix: list[int], rng_seed: int,
                                                            chaos: int, cancel: int) -> None:
    simulate(d, prefix, rng_seed, chaos > 0, cancel == 0)


@_settings(0.15)
@given(d=app_defs(limits=True, batches=False), prefix=schedules, rng_seed=st.integers(0, 2**32 - 1),
       chaos=st.booleans())
def test_activation_limit_without_batches(d: AppDef, prefix: list[int], rng_seed: int, chaos: bool) -> None:
    simulate(d, prefix, rng_seed, chaos, False)


@_settings(0.15)
@given(d=app_defs(limits=True), prefix=schedules, rng_seed=st.integers(0, 2**32 - 1), chaos=st.booleans())
def test_activation_limit_with_batches(d: AppDef, prefix: list[int], rng_seed: int, chaos: bool) -> None:
    simulate(d, prefix, rng_seed, chaos, False)


# -- fixed event sequences ------------------------------------------------------------------


def _unused(*args: Any) -> Any:
    raise AssertionError("the engine never runs agent code")


def ag(name: str, inp: Any = Num, out: Any = Num) -> Agent:
    return agent(name).contracts(input=inp, output=out).engine(_unused)


def n(value: int) -> dict[str, int]:
    return {"n": value}


class Script:
    """Feeds explicit events to an engine (each through encode/decode) and keeps what it said."""

    def __init__(self, agents: list[Agent], max_activations: int = 100) -> None:
        self.app = CompiledApp("t", agents, max_activations)
        self.engine = RunEngine(self.app, "run")
        self.log: list[dict[str, Any]] = []
        self.commands: list[Command] = []

    def handle(self, event: Event) -> list[Command]:
        self.log.append(encode(event))
        cmds = self.engine.handle(decode(self.log[-1]))
        self.commands += cmds
        return cmds

    def started(self, agent_name: str | None = None) -> list[Activation]:
        return [c.activation for c in self.commands if isinstance(c, StartActivation)
                and agent_name in (None, c.activation.agent)]

    def one(self, agent_name: str, *args: Any) -> Activation:
        """The one activation of ``agent_name`` started (on ``args``, if given)."""
        found = [a for a in self.started(agent_name) if not args or a.args == args]
        assert len(found) == 1, found
        return found[0]

    def done(self, agent_name: str, output: Any, *args: Any) -> list[Command]:
        return self.handle(ActivationFinished(self.one(agent_name, *args).id, "completed", output))

    def finish(self) -> FinishRun | None:
        return next((c for c in self.commands if isinstance(c, FinishRun)), None)

    def replays(self) -> None:
        """A fresh engine fed the log says the same."""
        engine = RunEngine(self.app, "run")
        assert [c for e in self.log for c in engine.handle(decode(e))] == self.commands


def _starts(cmds: list[Command]) -> list[Activation]:
    return [c.activation for c in cmds if isinstance(c, StartActivation)]


def test_two_batches_of_one_agent_run_twice_do_not_mix() -> None:
    e, p, q = ag("e"), ag("p"), ag("q")
    p.reacts_to(e)
    q.reacts_to(e)
    lst = ag("l", Num, Nums).reacts_to(p).reacts_to(q)
    w = ag("w").reacts_to(lst, each=True)
    g = ag("g", Nums).reacts_to(w)
    s = Script([e, p, q, lst, w, g])
    s.handle(RunStarted((("e", n(0)),)))
    s.done("e", n(1))
    s.done("p", n(10))
    s.done("q", n(20))
    s.done("l", [n(11), n(12)], n(10))
    s.done("l", [n(21)], n(20))
    assert [a.args for a in s.started("w")] == [(n(11),), (n(12),), (n(21),)]
    # The second batch finishes first: its gather has its one item, nothing of the first batch.
    assert [a.args for a in _starts(s.done("w", n(210), n(21)))] == [([n(210)],)]
    assert _starts(s.done("w", n(120), n(12))) == []
    (g1,) = _starts(s.done("w", n(110), n(11)))
    assert g1.agent == "g" and g1.args == ([n(110), n(120)],)  # source order, not finish order
    for a in s.started("g"):
        s.handle(ActivationFinished(a.id, "completed", n(0)))
    assert s.finish() == FinishRun("completed")
    s.replays()


def test_empty_each_gives_each_gathering_agent_one_activation_with_no_items() -> None:
    e = ag("e", Num, Nums)
    w = ag("w").reacts_to(e, each=True)
    g1, g2 = ag("g1", Nums).reacts_to(w), ag("g2", Nums).reacts_to(w)
    s = Script([e, w, g1, g2])
    s.handle(RunStarted((("e", n(0)),)))
    cmds = s.done("e", [])
    assert [(a.agent, a.kind, a.args, a.batch) for a in _starts(cmds)] == [("g1", "gather", ([],), ()),
                                                                         ("g2", "gather", ([],), ())]
    s.done("g1", n(1))
    assert s.done("g2", n(2)) == [FinishRun("completed")]
    assert s.started("w") == []


def test_when_dropping_every_item_gives_an_empty_gather_and_survivors_keep_their_order() -> None:
    e = ag("e", Num, Nums)
    w = ag("w").reacts_to(e, each=True, when=lambda x: x.n > 100)
    g = ag("g", Nums).reacts_to(w)
    s = Script([e, w, g])
    s.handle(RunStarted((("e", n(0)),)))
    assert [(a.agent, a.args) for a in _starts(s.done("e", [n(1), n(2), n(3)]))] == [("g", ([],))]

    e2 = ag("e", Num, Nums)
    w2 = ag("w").reacts_to(e2, each=True, when=lambda x: x.n % 2 == 1)
    g2 = ag("g", Nums).reacts_to(w2)
    s = Script([e2, w2, g2])
    s.handle(RunStarted((("e", n(0)),)))
    s.done("e", [n(1), n(2), n(3), n(4), n(5)])
    assert [(a.args, ref(a.batch[0])[1]) for a in s.started("w")] == [((n(1),), 0), ((n(3),), 2), ((n(5),), 4)]
    s.done("w", n(50), n(5))
    s.done("w", n(10), n(1))
    (g_act,) = _starts(s.done("w", n(30), n(3)))
    assert g_act.args == ([n(10), n(30), n(50)],)


def test_nested_each_gathers_per_outer_item_then_once() -> None:
    e = ag("e", Num, Nums)
    w1 = ag("w1", Num, Nums).reacts_to(e, each=True)
    w2 = ag("w2").reacts_to(w1, each=True)
    g2 = ag("g2", Nums).reacts_to(w2)
    g1 = ag("g1", Nums).reacts_to(g2)
    s = Script([e, w1, w2, g2, g1])
    s.handle(RunStarted((("e", n(0)),)))
    s.done("e", [n(1), n(2)])
    # The second outer item's list is empty: its inner gather runs at once, inside the outer item.
    (inner_empty,) = _starts(s.done("w1", [], n(2)))
    assert (inner_empty.agent, inner_empty.args, [ref(b)[1] for b in inner_empty.batch]) == ("g2", ([],), [1])
    assert _starts(s.done("g2", n(200), [])) == []  # the outer batch still waits for item 0
    s.done("w1", [n(11), n(12)], n(1))
    assert [len(a.batch) for a in s.started("w2")] == [2, 2]
    s.done("w2", n(120), n(12))
    (inner,) = _starts(s.done("w2", n(110), n(11)))
    assert (inner.args, [ref(b)[1] for b in inner.batch]) == (([n(110), n(120)],), [0])
    (outer,) = _starts(s.done("g2", n(100), [n(110), n(120)]))
    assert (outer.agent, outer.args, outer.batch) == ("g1", ([n(100), n(200)],), ())  # outer item order
    assert s.done("g1", n(0)) == [FinishRun("completed")]
    s.replays()


def test_a_list_over_a_plain_edge_arrives_whole() -> None:
    e = ag("e", Num, Nums)
    whole = ag("whole", Nums).reacts_to(e)
    s = Script([e, whole])
    assert s.app.specs["whole"].kind == "single"
    s.handle(RunStarted((("e", n(0)),)))
    (a,) = _starts(s.done("e", [n(1), n(2)]))
    assert (a.kind, a.args, a.batch) == ("edge", ([n(1), n(2)],), ())


def test_converge_fires_once_per_batch_item_and_once_per_run() -> None:
    e = ag("e", Num, Nums)
    w = ag("w").reacts_to(e, each=True)
    x, y = ag("x").reacts_to(w), ag("y").reacts_to(w)
    c = ag("c", (Num, Num)).reacts_to(x, y)
    s = Script([e, w, x, y, c])
    s.handle(RunStarted((("e", n(0)),)))
    s.done("e", [n(1), n(2)])
    s.done("w", n(10), n(1))
    s.done("w", n(20), n(2))
    s.done("x", n(21), n(20))
    s.done("x", n(11), n(10))
    assert s.started("c") == []
    (c2,) = _starts(s.done("y", n(22), n(20)))
    assert (c2.args, ref(c2.batch[0])[1]) == ((n(21), n(22)), 1)
    (c1,) = _starts(s.done("y", n(12), n(10)))
    assert (c1.args, ref(c1.batch[0])[1]) == ((n(11), n(12)), 0)

    top, a, b = ag("top"), ag("a"), ag("b")
    a.reacts_to(top)
    a.reacts_to(a, when=lambda v: v.n < 3)  # a produces several outputs, one after the other
    b.reacts_to(top)
    cc = ag("cc", (Num, Num)).reacts_to(a, b)
    s = Script([top, a, b, cc])
    s.handle(RunStarted((("top", n(0)),)))
    s.done("top", n(0))
    s.done("a", n(1), n(0))
    s.done("b", n(5))
    s.done("a", n(2), n(1))
    s.done("a", n(3), n(2))
    assert [x.args for x in s.started("cc")] == [(n(1), n(5))]


def test_a_failing_call_replies_to_its_caller_and_the_run_goes_on() -> None:
    o, t = ag("o"), ag("t")
    s = Script([o, t])
    s.handle(RunStarted((("o", n(0)),)))
    (call,) = _starts(s.handle(MessageSent("o:entry", "0", "t", "call", n(1))))
    assert (call.kind, call.reply_to, call.cause) == ("call", "o:entry/0", "o:entry")
    error = ErrorInfo("t", "t", 3, "ValueError", "no")
    (reply,) = s.handle(ActivationFinished(call.id, "failed", error=error))
    assert isinstance(reply, DeliverReply) and (reply.caller, reply.key) == ("o:entry", "o:entry/0")
    assert (reply.reply.status, reply.reply.error) == ("failed", error)
    assert s.engine.status == "running" and s.engine.replies["o:entry/0"] == reply.reply
    assert s.handle(MessageSent("o:entry", "0", "t", "call", n(1))) == []  # replayed call: the reply stands
    assert s.done("o", n(9)) == [FinishRun("completed")]
    s.replays()

    # A send is not waited for: its failure is the run's.
    s = Script([ag("o"), ag("t")])
    s.handle(RunStarted((("o", n(0)),)))
    (sent,) = _starts(s.handle(MessageSent("o:entry", "0", "t", "send", n(1))))
    s.handle(ActivationFinished(sent.id, "failed", error=error))
    assert s.engine.ending and s.handle(ActivationFinished("o:entry", "cancelled")) == [FinishRun("failed", error)]


def _boom(x: Num) -> bool:
    raise ValueError("boom")


@pytest.mark.parametrize("how", ["failed", "route-error", "limit"])
def test_abort_lists_only_running_activations(how: str) -> None:
    e1, e2 = ag("e1"), ag("e2")
    x = ag("x").reacts_to(e1, when=_boom if how == "route-error" else None)
    s = Script([e1, e2, x], max_activations=2 if how == "limit" else 100)
    s.handle(RunStarted((("e1", n(0)), ("e2", n(0)))))
    if how == "failed":
        cmds = s.handle(ActivationFinished("e1:entry", "failed", error=ErrorInfo("e1", None, 1, "E", "")))
    else:
        cmds = s.handle(ActivationFinished("e1:entry", "completed", n(1)))
    assert s.engine.ending
    assert cmds == [AbortActivations(("e2:entry",))]  # e1 has finished: only e2 is running


def test_duplicates_are_ignored() -> None:
    e = ag("e")
    x = ag("x").reacts_to(e)
    s = Script([e, x])
    first = s.handle(RunStarted((("e", n(0)),)))
    assert s.handle(RunStarted((("e", n(0)),))) == []
    assert first == [StartActivation(Activation("e:entry", "e", "entry", (n(0),)))]
    done = ActivationFinished("e:entry", "completed", n(1))
    (start_x,) = s.handle(done)
    assert s.handle(done) == []
    assert s.handle(ActivationFinished("e:entry", "failed")) == []  # late, and contradicting: still ignored
    assert s.handle(MessageSent("e:entry", "0", "x", "send", n(1))) == []  # from a finished sender
    assert isinstance(start_x, StartActivation)
    assert s.handle(ActivationFinished(start_x.activation.id, "completed", n(2))) == [FinishRun("completed")]
    assert s.handle(ActivationFinished(start_x.activation.id, "completed", n(2))) == []
    s.replays()


def test_approval_rejected_routes_nothing_and_the_run_completes() -> None:
    e, r = ag("e"), ag("r").needs_approval()
    r.reacts_to(e)
    x = ag("x").reacts_to(r)
    s = Script([e, r, x])
    s.handle(RunStarted((("e", n(0)),)))
    s.done("e", n(1))
    assert s.done("r", n(2)) == [AwaitApproval("r", s.one("r").id)]
    assert s.engine.waiting() == ["r"] and s.engine.pending() == []
    assert s.handle(PromiseResolved("r", {"approved": False})) == [FinishRun("completed")]
    assert s.started("x") == []

    s = Script([e, r, x])
    s.handle(PromiseResolved("r", "yes"))  # decided before it is asked
    s.handle(RunStarted((("e", n(0)),)))
    s.done("e", n(1))
    cmds = s.done("r", n(2))
    assert [type(c) for c in cmds] == [AwaitApproval, StartActivation] and s.engine.waiting() == []


def test_a_guarded_loop_stops_and_one_past_the_limit_fails() -> None:
    def loop(limit: int) -> Script:
        a = ag("a")
        a.reacts_to(a, when=lambda v: v.n < 3)
        s = Script([a], limit)
        s.handle(RunStarted((("a", n(0)),)))
        for i in range(1, 5):
            if s.finish():
                break
            (last,) = [x for x in s.started("a") if x.id in {p.id for p in s.engine.pending()}]
            s.handle(ActivationFinished(last.id, "completed", n(i)))
        return s

    s = loop(3)  # a(0) -> 1, a(1) -> 2, a(2) -> 3 stops: three activations
    assert s.finish() == FinishRun("completed") and len(s.started()) == 3
    s = loop(2)
    finish = s.finish()
    assert finish is not None and finish.status == "failed" and len(s.started()) == 2
    assert finish.error is not None and (finish.error.agent, finish.error.error_type) == ("a", "ActivationLimitError")


def test_limit_crossed_while_opening_a_batch() -> None:
    e = ag("e", Num, Nums)
    w = ag("w").reacts_to(e, each=True)
    g = ag("g", Nums).reacts_to(w)
    s = Script([e, w, g], max_activations=1)
    s.handle(RunStarted((("e", n(0)),)))
    s.handle(ActivationFinished("e:entry", "completed", [n(1), n(2)]))  # KeyError: 'e:entry#0'
    finish = s.finish()
    assert finish is not None and finish.error is not None and finish.error.error_type == "ActivationLimitError"


def test_limit_crossed_while_delivering_inside_a_batch() -> None:
    lst = ag("l", Num, Nums)
    w = ag("w").reacts_to(lst, each=True)
    x = ag("x").reacts_to(w)  # w's first out edge: crosses the limit
    g = ag("g", Nums).reacts_to(w)  # its second: an item for the batch's gather
    s = Script([lst, w, x, g], max_activations=2)
    s.handle(RunStarted((("l", n(0)),)))
    s.done("l", [n(1)])
    s.done("w", n(5))  # KeyError: 'l:entry#0'
    finish = s.finish()
    assert finish is not None and finish.error is not None and finish.error.error_type == "ActivationLimitError"
