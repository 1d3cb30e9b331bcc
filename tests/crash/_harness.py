"""What the crash suites for the engine backends share: worker processes started, watched and
killed by pid, markers they write at kill points, execution counters kept outside the engine, and
the resume-latency summary printed at the end of a module."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pydantic_core
import pytest

from roost import App, RunHandle
from roost.runtime import DurableRuntime
from roost.runtime._process import ServerProcess

from .restate_pipeline import RUN_INPUT, build_app

REPO = Path(__file__).resolve().parent.parent.parent
MARKER_TIMEOUT = 20.0  # seconds to reach a kill point (or to serve)
RUN_PLACEHOLDER = "<run>"  # stands for the run id inside outputs (idempotency keys), to compare runs
T = TypeVar("T")
H = TypeVar("H", bound="WorkerHarness")


class WorkerHarness:
    """One run id and one counter directory; the worker processes started on them."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.root = root
        self.run_id = run_id
        self.counter_dir = root / "counters"
        self.counter_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, tuple[Path, Path]] = {}

    def spawn(self, argv: list[str], name: str, *, block: bool,
              extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``python argv...`` from the repository root with roost on the path, no ROOST_*
        settings of this process but ``extra_env``, and ROOST_CRASH_BLOCK for the pipeline;
        markers of a killed process are removed first."""
        for old in self.counter_dir.glob("at-*"):
            old.unlink()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
        env["ROOST_CRASH_BLOCK"] = "1" if block else "0"
        env.update(extra_env or {})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
        n = len(self.procs)
        out, err = self.root / f"proc{n}-{name}.out", self.root / f"proc{n}-{name}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=fo, stderr=fe,
                                    stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        self.logs[proc.pid] = (out, err)
        return proc

    def stderr(self, proc: subprocess.Popen[bytes] | None) -> str:
        return "" if proc is None else self.logs[proc.pid][1].read_text(errors="replace")[-3000:]

    def last_json(self, proc: subprocess.Popen[bytes], timeout: float) -> Any:
        """Wait (bounded) for ``proc`` to exit 0; the last line it printed, as JSON."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process did not finish within {timeout} s:\n{self.stderr(proc)}")
        assert proc.returncode == 0, f"process failed ({proc.returncode}):\n{self.stderr(proc)}"
        lines = self.logs[proc.pid][0].read_text().strip().splitlines()
        assert lines, f"process printed no result:\n{self.stderr(proc)}"
        return json.loads(lines[-1])

    def wait_until(self, proc: subprocess.Popen[bytes] | None, what: str, check: Callable[[], Any],
                   timeout: float = MARKER_TIMEOUT) -> float:
        """Poll ``check`` (bounded); fail early if the process exits. Returns the seconds waited."""
        t0 = time.monotonic()
        while not check():
            if proc is not None and proc.poll() is not None:
                pytest.fail(f"process exited ({proc.returncode}) before {what}:\n{self.stderr(proc)}")
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"not reached within {timeout} s: {what}\n{self.stderr(proc)}")
            time.sleep(0.01)
        return time.monotonic() - t0

    def marker(self, point: str) -> list[str]:
        """The complete lines of the marker ``at-<point>`` (none while it is being written)."""
        path = self.counter_dir / f"at-{point}"
        return path.read_text().split("\n")[:-1] if path.exists() else []

    def wait_marker(self, proc: subprocess.Popen[bytes], *points: str) -> None:
        for point in points:
            self.wait_until(proc, f"marker at-{point}", lambda: self.marker(point))  # noqa: B023

    def kill(self, proc: subprocess.Popen[bytes]) -> float:
        """SIGKILL the process (by its pid); returns when it was killed."""
        assert proc.poll() is None, f"the process to kill has exited already:\n{self.stderr(proc)}"
        killed = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        return killed

    def close(self) -> None:
        for proc in self.procs:  # only the processes this harness started
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    # -- counters (outside the engine) -------------------------------------------------------------

    def counters(self) -> dict[str, list[dict[str, Any]]]:
        """Per step ('agent.step'): this run's execution events in its counter file, in order."""
        out: dict[str, list[dict[str, Any]]] = {}
        for path in sorted(self.counter_dir.glob("*.log")):
            lines = path.read_text().split("\n")[:-1]  # complete lines only: one may be being written
            events = [json.loads(line) for line in lines if line.strip()]
            out[path.stem] = [e for e in events if e["run"] == self.run_id]
        return out

    def counts(self, event: str) -> dict[str, int]:
        return {step: sum(e["event"] == event for e in events) for step, events in self.counters().items()}

    def first_start(self, after: float = 0.0, pid: int | None = None) -> dict[str, Any] | None:
        """The earliest 'start' line written after ``after`` (by ``pid`` if given)."""
        starts = [e for events in self.counters().values() for e in events
                  if e["event"] == "start" and e["at"] > after and (pid is None or e["pid"] == pid)]
        return min(starts, key=lambda e: e["at"]) if starts else None


class PipelineHarness(WorkerHarness):
    """A WorkerHarness for the pipeline of restate_pipeline.py, with client calls to its run from
    this process through a client-only runtime (``client_runtime``, per backend)."""

    finish_timeout = 30.0

    def client_runtime(self) -> DurableRuntime:
        raise NotImplementedError

    def client(self, fn: Callable[[App], Awaitable[T]]) -> T:
        async def go() -> T:
            async with build_app(self.client_runtime()) as app:
                await app.runtime()
                return await fn(app)

        return asyncio.run(go())

    def submit(self) -> None:
        async def go(app: App) -> None:
            await app.start(RUN_INPUT, self.run_id)

        self.client(go)

    def resolve(self, name: str, value: Any) -> None:
        async def go(app: App) -> None:
            await app.aresolve(self.run_id, name, value)

        self.client(go)

    def finish(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the run to finish; its status, outputs (JSON, run id masked) and agent status."""

        async def go(app: App) -> dict[str, Any]:
            result = await RunHandle(app, await app.runtime(), self.run_id).result(timeout or self.finish_timeout)
            outputs = json.dumps(pydantic_core.to_jsonable_python(result.outputs), sort_keys=True)
            return {"status": result.status, "outputs": json.loads(outputs.replace(self.run_id, RUN_PLACEHOLDER)),
                    "agent_status": result.agent_status}

        return self.client(go)


def harness_on(server: ServerProcess, make: Callable[[], H]) -> Iterator[H]:
    """Body of a test's harness fixture: the module's ``server`` started again if an earlier test
    left it down, then ``make()``'s harness, whose processes are killed after the test."""
    if not server.running:
        server.start()
    h = make()
    try:
        yield h
    finally:
        h.close()


def print_latencies(request: pytest.FixtureRequest, title: str, latencies: dict[str, dict[str, float]]) -> Iterator[None]:
    """Body of a module fixture: after the module, print each test's resume latency figures."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not latencies:
        return
    with capture.global_and_fixture_disabled():  # shown without -s
        reporter.write_line("")
        reporter.write_line(f"{title}, resume latency (seconds):")
        for test, figures in latencies.items():
            reporter.write_line(f"  {test:48s} " + "  ".join(f"{k}={v:.3f}" for k, v in figures.items()))
