"""How long Temporal keeps a finished run: the retention of its namespace.

A run is one workflow; Temporal deletes a closed workflow (and its history) once its namespace's
retention has passed since it closed. That is a property of the namespace, set by whoever
operates the cluster; ``roost dev temporal`` sets it from the ``retention`` setting for the
namespaces of the dev server it starts.
"""

from __future__ import annotations

from ..._config import format_duration, load_retention

FOREVER_HOURS = 876000
"""What ``retention = "forever"`` sets (100 years): a namespace has no 'never'."""


def retention_flag(seconds: float | None) -> str:
    """The ``--retention`` value of ``temporal operator namespace update``."""
    return f"{FOREVER_HOURS}h" if seconds is None else f"{max(1, round(seconds))}s"


def prune_note(address: str, namespace: str) -> str:
    seconds = load_retention()
    kept = "forever" if seconds is None else format_duration(seconds)
    return (
        f"Temporal deletes finished runs by itself, so roost prunes nothing there: a run is a workflow, and "
        f"Temporal deletes a closed workflow once the retention of its namespace has passed. Set namespace "
        f"{namespace!r} to the retention setting (now {kept}) with: temporal operator namespace update "
        f"--address {address} --namespace {namespace} --retention {retention_flag(seconds)} "
        f"('roost dev temporal' does this for its namespaces when it starts)"
    )
