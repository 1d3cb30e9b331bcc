"""One App used from several threads and event loops (embedded runtime): each loop gets a
runtime of its own, closed when the loop shuts down; nothing is left running or open."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from pydantic import BaseModel

from roost import App, agent
from roost.errors import ConfigError
from roost.runtime.local import LocalRuntime


class N(BaseModel):
    n: int


def inc(x: N) -> N:
    return N(n=x.n + 1)


async def ainc(x: N) -> N:
    await asyncio.sleep(0)
    return N(n=x.n + 1)


def chain(path: Path, **options: object) -> App:
    a = agent("a").contracts(input=N, output=N).engine(inc)  # a thread-pool step
    b = agent("b").contracts(input=N, output=N).engine(ainc).reacts_to(a)
    return App([a, b], name="threads", journal=path, **options)  # type: ignore[arg-type]


def statuses(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
    db.close()
    return {str(s): int(c) for s, c in rows}


def journal_fds(path: Path) -> int:
    """File descriptors of this process open on the journal (database, -wal, -shm)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(str(path))
    return count


def checkpointers() -> int:
    return sum(t.name == "roost-checkpoint" for t in threading.enumerate())


def test_eight_threads_running_one_app_all_complete(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    app = chain(path)
    # The journal exists before the threads start: creating a new journal from several
    # connections at once is another matter (issue 12, many processes).
    assert app.run(N(n=0))["b"] == N(n=2)
    results: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(5):
            try:
                out = app.run(N(n=100 * t + i), run_id=f"t{t}-{i}")["b"]
                with lock:
                    results.append(out.n)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                with lock:
                    errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=100)
    assert not any(th.is_alive() for th in threads)
    assert errors == []
    assert sorted(results) == sorted(100 * t + i + 2 for t in range(8) for i in range(5))
    assert statuses(path) == {"completed": 41}
    assert checkpointers() == 0 and journal_fds(path) == 0


def test_threads_with_their_own_loops_share_one_app(tmp_path: Path) -> None:
    """Long-lived loops in threads (arun, no aclose): each has its runtime, closed by asyncio.run."""
    path = tmp_path / "j.db"
    app = chain(path)
    app.run(N(n=0))
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    async def many(t: int) -> None:
        await asyncio.to_thread(barrier.wait, 30)
        await asyncio.gather(*(app.arun(N(n=i), run_id=f"l{t}-{i}") for i in range(10)))

    def worker(t: int) -> None:
        try:
            asyncio.run(many(t))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=100)
    assert errors == []
    assert statuses(path) == {"completed": 41}
    assert checkpointers() == 0 and journal_fds(path) == 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts file descriptors in /proc")
def test_asyncio_run_without_aclose_leaks_no_thread_or_connection(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    app = chain(path)
    for i in range(20):
        assert asyncio.run(app.arun(N(n=i)))["b"] == N(n=i + 2)
    # Each loop's runtime was closed as its loop shut down: no checkpointer thread, no connection.
    assert checkpointers() == 0
    assert journal_fds(path) == 0
    assert statuses(path) == {"completed": 20}


def test_asyncio_runner_closes_the_runtime_of_its_loop(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    app = chain(path)
    with asyncio.Runner() as runner:
        runner.run(app.arun(N(n=1)))
        runner.run(app.arun(N(n=2)))  # the same loop: the same runtime
        assert checkpointers() == 1
    assert checkpointers() == 0 and journal_fds(path) == 0


def test_a_given_runtime_serves_one_loop_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    app = chain(path, runtime=LocalRuntime(path))
    opened, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    async def hold() -> None:
        await app.arun(N(n=1))
        opened.set()
        await asyncio.to_thread(release.wait, 60)

    def worker() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    th = threading.Thread(target=worker)
    th.start()
    try:
        assert opened.wait(60)
        with pytest.raises(ConfigError, match="one runtime .* open in another event loop"):
            app.run(N(n=2))
    finally:
        release.set()
        th.join(timeout=60)
    assert errors == []
    assert app.run(N(n=3))["b"] == N(n=5)  # that loop is gone: the runtime serves this one
    assert statuses(path) == {"completed": 2}
