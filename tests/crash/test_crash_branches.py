"""kill -9 while two concurrent branches of one activation are both inside their last step.

Step identity is the branch's path, not the order steps finished in, so after the restart each
branch gets its own journaled results back, no journaled step runs again, and the result equals
an uninterrupted run's (see tests/crash/branches_pipeline.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import HERE, Harness

pytestmark = pytest.mark.crash

PIPELINE = HERE / "branches_pipeline.py"
EXPECTED = {"a": ["A0<>", "A1<A0>", "A2<A0+A1>"], "b": ["B0<>", "B1<B0>", "B2<B0+B1>"]}


def test_uninterrupted(tmp_path: Path) -> None:
    h = Harness(tmp_path, pipeline=PIPELINE)
    try:
        assert h.run("none") == {"status": "completed", "outputs": {"fork": EXPECTED}}
        assert h.counts("done") == {f"{t}{i}": 1 for t in "AB" for i in range(3)}
    finally:
        h.close()


@pytest.mark.parametrize("attempt", range(3))
def test_kill_with_both_branches_in_their_last_step(tmp_path: Path, attempt: int) -> None:
    h = Harness(tmp_path, pipeline=PIPELINE)
    try:
        proc = h.start("last")
        h.wait_marker(proc, "last-A", "last-B")
        h.kill(proc)
        before = h.counters()
        journaled = {f"{a.split(':')[0]}:{n}" for a, n in h.query(
            "SELECT position, value FROM journal WHERE run_id=? AND kind='step' AND status='done'", h.run_id)}
        assert len(journaled) == 4, f"the first two steps of each branch are journaled: {journaled}"
        final = h.run("none")
        assert final == {"status": "completed", "outputs": {"fork": EXPECTED}}, "each branch got its own results"
        starts, dones = h.counts("start"), h.counts("done")
        for name in ("A0", "A1", "B0", "B1"):  # journaled before the kill: never run again
            assert starts[name] == 1 and dones[name] == 1, (name, h.counters()[name])
        for name in ("A2", "B2"):  # running at the kill: run again, done once in all
            assert [e["event"] for e in before[name]] == ["start"]
            assert starts[name] == 2 and dones[name] == 1
        assert {e["pid"] for e in h.counters()["A0"]} == {proc.pid}
    finally:
        h.close()
