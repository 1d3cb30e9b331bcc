"""Restate service names for roost's services and an app's agents."""

from __future__ import annotations

RUN = "RoostRun"  # Workflow keyed by run id: start, wait for completion (attach)
LEDGER = "RoostLedger"  # Virtual Object keyed by run id: bookkeeping, promises, the run record
ACTIVATE = "activate"


def agent_service(app: str, agent: str) -> str:
    """Each agent is a Virtual Object named ``<app>.<agent>``, keyed by its entity key."""
    return f"{app}.{agent}"
