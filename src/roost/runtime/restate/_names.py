"""Restate service names for an app's run workflow and its keyed agents.

App and agent names hold no dots, so ``<app>.<agent>`` (one dot) never collides with
``roost.<app>.run`` (two dots).
"""

from __future__ import annotations

ACTIVATE = "activate"
RUN_PATTERN = "roost.%.run"  # SQL LIKE pattern matching every app's run workflow
CHANGED = "__roost.changed."
"""Prefix of the run's own promises: ``CHANGED<n>`` is resolved when the run starts waiting on
promises, or finishes, for the n-th time (what the ``waiting`` handler blocks on)."""


def agent_service(app: str, agent: str) -> str:
    """A ``keyed_by`` agent is a Virtual Object named ``<app>.<agent>``, keyed by its entity key."""
    return f"{app}.{agent}"


def run_service(app: str) -> str:
    """The run workflow, keyed by run id: one invocation runs the whole run."""
    return f"roost.{app}.run"
