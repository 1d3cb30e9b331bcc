"""Structured logs: a retried step is logged with its attempt number and cause, and every
record carries the run id and the agent as ``extra=`` fields."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from roost import App, RetryPolicy, RunFailedError, agent
from roost.runtime._base import StepInfo
from roost.runtime._steps import log_attempt

from ..conformance.models import Done, Idea


def test_a_retried_step_logs_each_failed_attempt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def flaky(idea: Idea) -> Done:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"hiccup {len(calls)}")
        return Done(value=idea.topic)

    app = App([agent("a").contracts(input=Idea, output=Done).engine(flaky)
               .retry(RetryPolicy(max_attempts=3, initial_interval=0.01))], journal=tmp_path / "j.db")
    with caplog.at_level(logging.INFO, logger="roost"):
        app.run(Idea(topic="x"), run_id="r-logs")
    retries = [r for r in caplog.records if getattr(r, "attempt", None) is not None]
    assert [(r.levelno, r.attempt, r.cause) for r in retries] == [  # type: ignore[attr-defined]
        (logging.WARNING, 1, "ConnectionError: hiccup 1"), (logging.WARNING, 2, "ConnectionError: hiccup 2")]
    for r in retries:
        assert (r.run_id, r.agent, r.step) == ("r-logs", "a", "a")  # type: ignore[attr-defined]
        assert r.name.startswith("roost") and "attempt" in r.getMessage() and "hiccup" in r.getMessage()


def test_the_last_failed_attempt_and_the_failed_activation_are_logged(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    def broken(idea: Idea) -> Done:
        raise ValueError("no")

    app = App([agent("b").contracts(input=Idea, output=Done).engine(broken)
               .retry(RetryPolicy(max_attempts=2, initial_interval=0.01))], journal=tmp_path / "j.db")
    with caplog.at_level(logging.INFO, logger="roost"), pytest.raises(RunFailedError):
        app.run(Idea(topic="x"), run_id="r-fail-logs")
    mine = [r for r in caplog.records if getattr(r, "run_id", None) == "r-fail-logs"]
    assert [(r.levelno, getattr(r, "attempt", None)) for r in mine if hasattr(r, "attempt")] == [
        (logging.WARNING, 1), (logging.ERROR, 2)]
    finished = [r for r in mine if getattr(r, "event", None) == "finished"]
    assert finished and finished[0].agent == "b" and "ValueError" in finished[0].getMessage()  # type: ignore[attr-defined]


def test_retries_outside_roost_runtimes_name_who_retries(caplog: pytest.LogCaptureFixture) -> None:
    info = StepInfo("r", "a", "s", 1, "r/a:1/0", "a:1", None)
    with caplog.at_level(logging.INFO, logger="roost"):
        log_attempt(info, 4, TimeoutError("slow"), "by Temporal")
    [record] = caplog.records
    assert record.attempt == 4 and record.activation_id == "a:1"  # type: ignore[attr-defined]
    assert "retried by Temporal" in record.getMessage()
