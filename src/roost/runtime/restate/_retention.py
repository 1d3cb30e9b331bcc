"""How long Restate keeps a finished run: the workflow retention of the app's run workflow.

A run is one invocation of the Workflow ``roost.<app>.run``; its record lives in the workflow's
state. Restate keeps that state and the workflow's promises for the workflow's retention after the
run finished, then deletes them by itself (its default is one day). roost registers the
``retention`` setting as that retention with every deployment of the app, so finished runs stay
listed for as long as on the embedded runtime.
"""

from __future__ import annotations

from datetime import timedelta

from ..._config import format_duration, load_retention

FOREVER = timedelta(days=36500)
"""What ``retention = "forever"`` registers: Restate has no 'never'."""


def workflow_retention(seconds: float | None) -> timedelta:
    return FOREVER if seconds is None else timedelta(seconds=seconds)


def configured() -> timedelta:
    """The retention to register with a deployment (the ``retention`` setting)."""
    return workflow_retention(load_retention())


def prune_note(admin: str) -> str:
    seconds = load_retention()
    kept = "forever" if seconds is None else format_duration(seconds)
    return (
        f"Restate deletes finished runs by itself, so roost prunes nothing there: a run is an invocation of the "
        f"workflow roost.<app>.run, and Restate keeps its record (the workflow's state and promises) for the "
        f"workflow retention, which roost registers from the retention setting (now {kept}: ROOST_RETENTION or "
        f"[tool.roost] retention) when it serves the app. A changed setting applies to runs of the next deployment "
        f"registered ('roost serve'); see it with: curl {admin}/services/roost.APP.run"
    )
