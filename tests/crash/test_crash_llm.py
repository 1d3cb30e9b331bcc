"""kill -9 an LLM agent in the middle of its tool loop on the local runtime, restart it, and check
by the scripted model server's own request log that no answered model turn is asked again, and by
counter files the tools write outside the journal that no tool ran twice.

The server lives in this process, so it outlives the killed child (tests/crash/llm_pipeline.py).
Script: the model calls ``search``, then ``multiply``, then answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roost.testing import FakeModelServer, Reply

from .conftest import REPO, Harness
from .llm_pipeline import MODEL, Answer

pytestmark = pytest.mark.crash

LLM_PIPELINE = Path(__file__).resolve().parent / "llm_pipeline.py"
KEY = "sk-crash-test-" + "k3y" * 8
ANSWER = Answer(summary="two hits", product=42)
SCRIPT = [Reply.tool_call("search", query="durable"), Reply.tool_call("multiply", a=6, b=7)]


class LLMHarness(Harness):
    """The crash harness, running llm_pipeline.py against the scripted server."""

    def __init__(self, root: Path, server: FakeModelServer) -> None:
        super().__init__(root, run_id="crash-llm-1")
        self.server = server

    def start(self, scenario: str, *, approve: str = "auto") -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROOST_", "OPENAI_"))}
        env.update(ROOST_LLM_BASE_URL=self.server.base_url, ROOST_LLM_API_KEY=KEY,
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")])))
        n = len(self.procs)
        out, err = self.root / f"proc{n}-{scenario}.out", self.root / f"proc{n}-{scenario}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(
                [sys.executable, str(LLM_PIPELINE), str(self.journal), self.run_id, str(self.counter_dir), scenario],
                cwd=REPO, env=env, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = (out, err)
        return proc

    def model_requests(self) -> list[dict[str, Any]]:
        return self.server.requests(MODEL)

    def no_key_in_journal(self) -> None:
        for path in self.root.glob("journal.db*"):
            assert KEY.encode() not in path.read_bytes(), path


@pytest.fixture
def llm_harness(tmp_path: Path) -> Iterator[LLMHarness]:
    with FakeModelServer(api_key=KEY) as server:
        h = LLMHarness(tmp_path, server)
        try:
            yield h
        finally:
            h.close()


def check_answered(final: dict[str, Any]) -> None:
    assert final["status"] == "completed"
    assert Answer.model_validate(final["output"]) == ANSWER


def assert_tools_ran_once(h: LLMHarness, *, multiply_starts: int) -> None:
    counters = h.counters()
    assert h.counts("done") == {"researcher.search": 1, "researcher.multiply": 1}, counters
    assert h.counts("start") == {"researcher.search": 1, "researcher.multiply": multiply_starts}, counters
    for step, events in counters.items():  # one idempotency key per tool call, across processes
        assert len({e["key"] for e in events}) == 1, f"{step}: idempotency key changed: {events}"
    assert counters["researcher.search"][0]["key"] != counters["researcher.multiply"][0]["key"]


def test_killed_inside_a_tool_resumes_without_asking_the_model_again(llm_harness: LLMHarness) -> None:
    h = llm_harness
    h.server.script(MODEL, *SCRIPT, Reply.answer(ANSWER))
    proc = h.start("tool")
    h.wait_marker(proc, "tool")  # inside multiply: model calls 1-2 and search are journaled
    h.kill(proc)
    before = h.model_requests()
    assert len(before) == 2
    assert h.counts("done") == {"researcher.search": 1, "researcher.multiply": 0}
    assert h.journaled_steps() == {"researcher.model call 1", "researcher.tool search", "researcher.model call 2"}

    final = h.run("none")
    check_answered(final)
    requests = h.model_requests()
    assert requests[:2] == before and len(requests) == 3, "an answered model turn was asked again"
    # The last request carries both tool results, the interrupted one computed after the restart.
    tool_results = [m["content"] for m in requests[2]["messages"] if m["role"] == "tool"]
    assert json.loads(tool_results[0]) == ["durable: journaled steps", "durable: idempotency keys"]
    assert tool_results[1] == "42"
    # multiply was interrupted (at least once: it starts again), search never ran again.
    assert_tools_ran_once(h, multiply_starts=2)
    h.no_key_in_journal()


def test_killed_while_waiting_for_the_model_asks_only_the_unanswered_turn_again(llm_harness: LLMHarness) -> None:
    h = llm_harness
    h.server.script(MODEL, *SCRIPT, Reply.slow(3600, Reply.answer(ANSWER)), Reply.answer(ANSWER))
    proc = h.start("none")
    h.wait_until(proc, "the third model request", lambda: len(h.model_requests()) >= 3)
    h.kill(proc)
    assert h.counts("done") == {"researcher.search": 1, "researcher.multiply": 1}

    final = h.run("none")
    check_answered(final)
    requests = h.model_requests()
    assert len(requests) == 4
    assert requests[3] == requests[2], "the unanswered turn is asked again, exactly as before"
    bodies = [json.dumps(r, sort_keys=True) for r in requests[:3]]
    assert len(set(bodies)) == 3, "an answered model turn was asked again"
    assert_tools_ran_once(h, multiply_starts=1)
    h.no_key_in_journal()
