"""Cancel and kill -9 (embedded runtime): a recorded cancel survives the process that should carry it out.

Real processes run tests/integration/cancel_kill_app.py (a run waiting on a promise, with an async
step and a sync step in flight); counters outside the journal show what ran. The process that runs
the run is killed right after the cancel request is durable -- before it could act on it:

* the request came from another process (this one) while the owner was stopped (SIGSTOP), then
  the owner is killed; the run is then taken over by a process that resumes it, or by one that
  cancels it again with the app's code (what ``roost runs cancel --app`` does);
* the owner itself asked, and is killed right after its request committed; a process resumes it.

Each time the run ends ``cancelled``, and nothing starts after the cancel: no step runs twice
(the sync and async steps that were in flight when the process died are not restarted) and no
step after them runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from roost import App, RunHandle
from roost.runtime.local import LocalRuntime

from ..crash._harness import WorkerHarness
from .cancel_kill_app import RUN_ID, N, build, counts

SCRIPT = str(Path(__file__).resolve().parent / "cancel_kill_app.py")
FINISH_TIMEOUT = 60.0  # seconds a process gets to end the run by itself
IN_FLIGHT = {"before": 1, "slow": 1, "blocking": 1}  # what ran before the cancel


class Procs(WorkerHarness):
    def __init__(self, root: Path) -> None:
        super().__init__(root, RUN_ID)
        self.journal = root / "journal.db"

    def start(self, mode: str) -> subprocess.Popen[bytes]:
        return self.spawn([SCRIPT, mode, str(self.journal), str(self.counter_dir)], mode, block=False)

    def result(self, proc: subprocess.Popen[bytes]) -> dict[str, str]:
        result: dict[str, str] = self.last_json(proc, FINISH_TIMEOUT)
        return result

    def statuses(self) -> tuple[str, set[str]]:
        """The run's status and those of its activations, in the journal."""
        with closing(sqlite3.connect(self.journal, timeout=10.0)) as db:
            run = db.execute("SELECT status FROM runs WHERE run_id=?", (RUN_ID,)).fetchone()
            acts = {str(r[0]) for r in db.execute("SELECT status FROM messages WHERE run_id=?", (RUN_ID,))}
        return str(run[0]), acts


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.close()


def ended_cancelled(procs: Procs) -> None:
    assert procs.statuses() == ("cancelled", {"cancelled"}), procs.statuses()
    assert counts(procs.counter_dir) == IN_FLIGHT, f"a step started after the cancel: {counts(procs.counter_dir)}"


@pytest.mark.parametrize("then", ["resume", "cancel-again"])
def test_owner_killed_right_after_another_process_asked(procs: Procs, then: str) -> None:
    owner = procs.start("start")
    procs.wait_marker(owner, "ready")
    os.kill(owner.pid, signal.SIGSTOP)  # it cannot act on the request before it dies

    async def ask() -> None:
        async with LocalRuntime(procs.journal, resume=False) as rt:
            await rt.cancel(RUN_ID, "not needed")  # the owner lives (stopped): the request is recorded
            assert (await rt.get(RUN_ID)).status == "waiting"

    asyncio.run(ask())
    procs.kill(owner)
    assert procs.statuses()[0] == "running"
    if then == "resume":
        assert procs.result(procs.start("resume")) == {"status": "cancelled"}
    else:  # asked again, by a process with the app's code (as `roost runs cancel --app FILE` does)
        assert procs.result(procs.start("cancel")) == {"status": "cancelled"}
    ended_cancelled(procs)


def test_owner_killed_right_after_its_own_request(procs: Procs) -> None:
    owner = procs.start("self-cancel")
    procs.wait_marker(owner, "ready", "cancel-recorded")
    procs.kill(owner)
    assert procs.statuses()[0] == "running"
    assert procs.result(procs.start("resume")) == {"status": "cancelled"}
    ended_cancelled(procs)


# -- Restate and Temporal: the cancel sent while the process serving the run is killed -------------------

SERVED = str(Path(__file__).resolve().parent / "cancel_kill_served.py")


@pytest.fixture(scope="module")
def restate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.restate_support import start_test_server

    server = start_test_server(tmp_path_factory.mktemp("restate-cancel-kill"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from roost.runtime.temporal import TemporalDevServer

    with TemporalDevServer(tmp_path_factory.mktemp("temporal-cancel-kill")) as server:
        yield server


def served_backend(backend: str, procs: Procs, request: pytest.FixtureRequest) -> tuple[list[str], Any]:
    """The serving process's arguments (fixed across restarts) and a client-only runtime factory."""
    if backend == "restate":
        from roost.runtime.restate import RestateRuntime
        from roost.runtime.restate._server import free_port

        server = request.getfixturevalue("restate_server")
        args = [f"http://127.0.0.1:{free_port()}", server.admin_url]
        return args, lambda: RestateRuntime(ingress=server.ingress_url, admin=server.admin_url, serve=False)
    from roost.runtime.temporal import TemporalRuntime

    server = request.getfixturevalue("temporal_server")
    args = [server.address, f"cancel-kill-{os.urandom(3).hex()}"]
    return args, lambda: TemporalRuntime(address=server.address, task_queue=args[1], serve=False)


@pytest.mark.parametrize("backend", [pytest.param("restate", marks=pytest.mark.restate),
                                     pytest.param("temporal", marks=pytest.mark.temporal)])
def test_cancel_sent_while_the_serving_process_is_killed(procs: Procs, backend: str,
                                                         request: pytest.FixtureRequest) -> None:
    args, client = served_backend(backend, procs, request)
    run_id = f"kill-cancel-{os.urandom(3).hex()}"

    def serve() -> subprocess.Popen[bytes]:
        proc = procs.spawn([SERVED, backend, str(procs.counter_dir), *args], backend, block=False)
        procs.wait_marker(proc, "serving")
        return proc

    async def with_app(fn: Any) -> Any:
        app = build(None, procs.counter_dir, client())
        try:
            await app.runtime()
            return await fn(app)
        finally:
            await app.aclose()

    async def start(app: App) -> None:
        handle = await app.start(N(n=0), run_id=run_id)
        assert await handle.approval(timeout=FINISH_TIMEOUT) == "go"

    async def cancel(app: App) -> None:
        await app.acancel(run_id, reason="not needed")

    async def result(app: App) -> str:
        return str((await RunHandle(app, await app.runtime(), run_id).result(FINISH_TIMEOUT)).status)

    first = serve()
    asyncio.run(with_app(start))
    procs.wait_until(first, "the async and sync steps to start",
                     lambda: {"slow", "blocking"} <= set(counts(procs.counter_dir)))
    procs.kill(first)
    asyncio.run(with_app(cancel))  # recorded by the server; nothing serves the run now
    serve()
    # A sync step in flight when its process died may run again before the cancel is seen (the
    # backend retries what it never recorded); it is let finish, and the run still ends cancelled.
    (procs.counter_dir / "release").touch()
    assert asyncio.run(with_app(result)) == "cancelled"
    ran = counts(procs.counter_dir)
    assert not {"after", "after-slow", "after-blocking"} & set(ran), f"a step ran after the cancel: {ran}"
    assert ran["before"] == 1, ran
