"""Faults injected into roost's own code on Restate: every run still ends, failed, naming why.

The endpoint serves in this process, so each test replaces one piece of roost's workflow
(the engine, the record, the driver, the activation around the user's code, a keyed agent's
object) with one that raises, starts a run and checks it ends ``failed`` with the injected cause
in its error, and that Restate shows its invocation finished rather than retrying it forever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from roost import App, RunFailedError, agent
from roost.runtime.restate import RestateRuntime
from roost.runtime.restate._server import RestateServer, aadmin_query, free_port

pytestmark = [pytest.mark.restate, pytest.mark.asyncio(loop_scope="module")]


class Q(BaseModel):
    text: str


class Injected(RuntimeError):
    """The fault these tests inject."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestateServer]:
    srv = RestateServer(tmp_path_factory.mktemp("restate-faults"))
    srv.start()
    yield srv
    srv.stop()


def _app(server: RestateServer, name: str, *, keyed: bool = False) -> App:
    up = agent("upper").contracts(input=Q, output=Q).engine(lambda q: Q(text=q.text.upper()))
    ex = agent("exclaim").contracts(input=Q, output=Q).engine(lambda q: Q(text=q.text + "!")).reacts_to(up)
    if keyed:
        ex.keyed_by(lambda q: q.text)
    runtime = RestateRuntime(ingress=server.ingress_url, admin=server.admin_url,
                             endpoint=f"http://127.0.0.1:{free_port()}")
    return App([up, ex], name=name, runtime=runtime)


def _fail_on(n: int, original: Callable[..., Any]) -> Callable[..., Any]:
    """``original``, except that its n-th call (from 1) raises Injected."""
    calls = [0]

    def patched(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            raise Injected(f"injected fault in {getattr(original, '__qualname__', original)}")
        return original(*args, **kwargs)

    return patched


def _fail_async_on(n: int, original: Callable[..., Any]) -> Callable[..., Any]:
    calls = [0]

    async def patched(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            raise Injected(f"injected fault in {getattr(original, '__qualname__', original)}")
        return await original(*args, **kwargs)

    return patched


def _points() -> dict[str, tuple[str, str, Callable[[Callable[..., Any]], Callable[..., Any]], bool]]:
    """Injection point: (module, attribute, wrapper, keyed app)."""
    return {
        "engine.handle": ("roost.runtime.restate._workflow.RunEngine", "handle", lambda f: _fail_on(2, f), False),
        "record flush": ("roost.runtime.restate._workflow.WorkflowRun", "_flush", lambda f: _fail_on(2, f), False),
        "driver.issue": ("roost.runtime.restate._driver.Driver", "issue", lambda f: _fail_on(2, f), False),
        "driver.settle": ("roost.runtime.restate._driver.Driver", "settle", lambda f: _fail_async_on(3, f), False),
        "activation key": ("roost.runtime.restate._workflow", "key_of", lambda f: _fail_on(2, f), False),
        "activation start": ("roost.runtime.restate._workflow.WorkflowRun", "_run", lambda f: _fail_async_on(2, f),
                             False),
        "keyed object": ("roost.runtime.restate._objects.ObjectRun", "_main", lambda f: _fail_async_on(1, f), True),
        "activation outcome": ("roost._activation", "perform", lambda f: _fail_async_on(1, f), False),
    }


@pytest.mark.parametrize("point", list(_points()))
async def test_a_fault_in_roost_ends_the_run_failed_naming_it(server: RestateServer, point: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    module_path, attr, wrap, keyed = _points()[point]
    parts = module_path.split(".")
    try:
        target: Any = importlib.import_module(module_path)
    except ModuleNotFoundError:
        target = getattr(importlib.import_module(".".join(parts[:-1])), parts[-1])
    monkeypatch.setattr(target, attr, wrap(getattr(target, attr)))
    name = "faults-" + point.replace(".", "-").replace(" ", "-")
    app = _app(server, name, keyed=keyed)
    run_id = f"{name}-1"
    try:
        with pytest.raises(RunFailedError) as info:
            await app.arun(Q(text="hi"), run_id=run_id, timeout=60)
        assert "injected fault" in str(info.value), str(info.value)
        rows = await aadmin_query(
            server.admin_url,
            "SELECT status, completion_result, retry_count FROM sys_invocation "
            f"WHERE target_service_name = 'roost.{name}.run' AND target_service_key = '{run_id}' "
            "AND target_handler_name = 'run'")
        assert [(r["status"], r["completion_result"]) for r in rows] == [("completed", "failure")], rows
    finally:
        await app.aclose()
