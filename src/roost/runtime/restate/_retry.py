"""How Restate retries roost's invocations when their endpoint failed or vanished."""

from __future__ import annotations

from datetime import timedelta

import restate

RETRY = restate.InvocationRetryPolicy(
    initial_interval=timedelta(milliseconds=100), exponentiation_factor=2.0, max_interval=timedelta(seconds=1),
)
"""Quickly at first and at most every second, so a run resumes within about a second of its
endpoint coming back. Never given up: roost's own failures end the run (failed) instead of
raising, so only infrastructure failures (a killed process, a restart) are retried here."""
