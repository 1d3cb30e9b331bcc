"""Restate service names for an app's agents and roost's per-app run services.

App and agent names hold no dots, so ``<app>.<agent>`` (one dot) never collides with
``roost.<app>.run`` / ``roost.<app>.ledger`` (two dots).
"""

from __future__ import annotations

ACTIVATE = "activate"
LEDGER_PATTERN = "roost.%.ledger"  # SQL LIKE pattern matching every app's ledger


def agent_service(app: str, agent: str) -> str:
    """Each agent is a Virtual Object named ``<app>.<agent>``, keyed by its entity key."""
    return f"{app}.{agent}"


def run_service(app: str) -> str:
    """Workflow keyed by run id: completes when the run does (clients attach to it)."""
    return f"roost.{app}.run"


def ledger_service(app: str) -> str:
    """Virtual Object keyed by run id: the run's record, bookkeeping and promises."""
    return f"roost.{app}.ledger"
