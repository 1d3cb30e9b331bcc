"""The demo pipeline (examples/newsroom.py) as the Restate and Temporal benchmarks run it.

``nr`` is examples/newsroom.py imported as the module ``newsroom`` (its models, its agents as
shipped). ``write_draft``, ``review`` and ``check_facts`` are its step functions without the
artificial sleeps: the bodies of examples/newsroom.py (and of the raw-SDK versions in examples/dx/,
which copy them) minus ``time.sleep(0.05)`` / ``await asyncio.sleep(0.05)``. Both sides of a
benchmark run these very function objects; ``roost_pipeline()`` wires them as newsroom.py does.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

from roost import App, RunHandle, RunResult, agent
from roost.agent import Agent

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOPIC = "durable agents"
URL = "https://example.invalid/why-durable-agents-matter"  # what the publisher produces for TOPIC


def load_example(name: str, path: Path, *, importable: bool = False) -> ModuleType:
    """Import an example file as a module under ``name``.

    ``importable`` puts the example's directory on sys.path (Temporal's workflow sandbox re-imports
    a workflow's module by name for every run, so it must be importable by that name)."""
    if importable:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves the models' annotations through sys.modules
    spec.loader.exec_module(module)
    return module


nr = load_example("newsroom", EXAMPLES / "newsroom.py")  # the roost demo (models, wiring)


def write_draft(idea: nr.Idea) -> nr.Draft:
    return nr.Draft(
        title=f"Why {idea.topic} matter",
        body=f"{idea.topic.capitalize()} keep their promises: every step is journaled and nothing runs twice.",
    )


async def review(draft: nr.Draft) -> nr.Review:
    return nr.Review(score=min(10, len(draft.body) // 10), notes="clear and short")


async def check_facts(draft: nr.Draft) -> nr.FactCheck:
    return nr.FactCheck(claims_checked=draft.body.count(":") + 1, problems=[])


decide = nr.decide  # no sleep in the original
publish = nr.publish  # no sleep in the original


def roost_pipeline() -> list[Agent]:
    """examples/newsroom.py's agents and wiring, with the no-sleep functions."""
    writer = agent("writer").contracts(input=nr.Idea, output=nr.Draft).engine(write_draft)
    critic = agent("critic").contracts(input=nr.Draft, output=nr.Review).engine(review)
    fact_checker = agent("fact_checker").contracts(input=nr.Draft, output=nr.FactCheck).engine(check_facts)
    editor = agent("editor").contracts(input=(nr.Draft, nr.Review, nr.FactCheck), output=nr.Verdict).engine(decide)
    publisher = agent("publisher").contracts(input=nr.Verdict, output=nr.Published).engine(publish)
    critic.reacts_to(writer)
    fact_checker.reacts_to(writer)
    editor.reacts_to(writer, critic, fact_checker).needs_approval()
    publisher.reacts_to(editor, when=lambda v: v.publish)
    return [writer, critic, fact_checker, editor, publisher]


def shipped_pipeline() -> list[Agent]:
    """examples/newsroom.py's own agents, with their 50 ms sleeps (the demo as shipped)."""
    return [nr.writer, nr.critic, nr.fact_checker, nr.editor, nr.publisher]


async def approve_and_check(app: App, handle: RunHandle, run_id: str, name: str) -> tuple[RunResult, float]:
    """Approve what a roost run of the demo waits on (``name``), await its result and check it;
    the result and when the approval call returned (``time.perf_counter()``)."""
    await app.aresolve(run_id, name, True)
    t_resolved = time.perf_counter()
    res = await handle.result(timeout=60)
    if res["publisher"].url != URL:
        raise RuntimeError(f"roost run {run_id} produced {res.outputs}")
    return res, t_resolved
