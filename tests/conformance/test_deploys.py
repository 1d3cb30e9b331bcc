"""Deploying a new version of an app while runs of the old one are in flight, on every runtime.

A new version never blocks new runs; runs of the old version are left alone, listed with their
version, finished by a process that has their version's code, and cancellable.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from roost import DurableContext, agent

from .conftest import MakeApp
from .models import Done, Draft, Idea

pytestmark = pytest.mark.asyncio(loop_scope="session")

BOUND = 60.0


def _version_1(make_app: MakeApp, name: str):  # type: ignore[no-untyped-def]
    writer = agent("writer").contracts(input=Idea, output=Draft).engine(
        lambda i: Draft(title=i.topic, body=f"about {i.topic}")).needs_approval()
    done = agent("done").contracts(input=Draft, output=Done).engine(lambda d: Done(value=d.body)).reacts_to(writer)
    return make_app([writer, done], name=name)


def _version_2(make_app: MakeApp, name: str):  # type: ignore[no-untyped-def]
    async def write(i: Idea, ctx: DurableContext) -> Draft:  # changed code and wiring: no approval, one more agent
        return Draft(title=i.topic, body=f"v2 on {i.topic}")

    writer = agent("writer").contracts(input=Idea, output=Draft).engine(write)
    done = agent("done").contracts(input=Draft, output=Done).engine(lambda d: Done(value=d.body)).reacts_to(writer)
    extra = agent("extra").contracts(input=Draft, output=Done).engine(lambda d: Done(value=d.title)).reacts_to(writer)
    return make_app([writer, done, extra], name=name)


async def test_a_deploy_leaves_runs_of_the_old_version_alone(make_app: MakeApp, runtime_name: str,
                                                             uid: Callable[[str], str]) -> None:
    name = uid("deploy").replace("_", "-")
    v1 = _version_1(make_app, name)
    old = await v1.start(Idea(topic="old"), run_id=uid("old"))
    doomed = await v1.start(Idea(topic="doomed"), run_id=uid("doomed"))
    assert await old.approval(timeout=BOUND) == "writer"
    assert await doomed.approval(timeout=BOUND) == "writer"
    await v1.aclose()  # the old version's process stops: the deploy

    v2 = _version_2(make_app, name)
    new = await v2.arun(Idea(topic="new"), run_id=uid("new"), timeout=BOUND)  # never blocked by the old runs
    assert new.status == "completed" and new["done"].value == "v2 on new" and new["extra"].value == "new"
    listed = {r.run_id: r for r in await (await v2.runtime()).list_runs(200)}
    assert listed[old.run_id].status not in ("completed", "failed", "cancelled")
    assert listed[old.run_id].version and listed[new.run_id].version
    assert listed[old.run_id].version != listed[new.run_id].version, "runs list shows each run's version"

    if runtime_name == "local":  # no process has the old code: the cancel is carried out here
        await v2.acancel(doomed.run_id)
        assert (await v2.aget(doomed.run_id)).status == "cancelled"

    v1_again = _version_1(make_app, name)  # a process with the old version's code finishes its runs
    await v1_again.aresolve(old.run_id, "writer", True)
    finished = await v1_again.aresume(old.run_id, timeout=BOUND)
    assert finished.status == "completed" and finished["done"].value == "about old"
    if runtime_name != "local":  # cancellable, from the new version, while the old one is served
        await v2.acancel(doomed.run_id)
        result = await v1_again.aresume(doomed.run_id, timeout=BOUND)
        assert result.status == "cancelled"
