"""What the UI's JSON API answers, built from the runtime-neutral RunSummary and RunRecord.

Pure functions (no web framework here), so every runtime's runs look the same in the browser.
A run's record goes out with the credentials of every URL in it masked (``_redact``): a page
in a browser is easily shown or copied, ``roost runs show --json`` gives the record as stored.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from .._redact import redact_text
from ..result import FINISHED, RunRecord
from ..runtime import RunSummary

if TYPE_CHECKING:
    from .._graph import CompiledApp


def summary_json(summary: RunSummary, now: float) -> dict[str, Any]:
    return {
        "run_id": summary.run_id,
        "app": summary.app,
        "status": summary.status,
        "runtime": summary.runtime,
        "version": summary.version,
        "created_at": summary.created_at,
        "finished_at": summary.finished_at,
        "age": max(0.0, now - summary.created_at) if summary.created_at else None,
    }


def agent_statuses(record: RunRecord) -> dict[str, str]:
    """Per agent, its last activation's status; 'waiting' for an agent whose approval the run
    awaits, or whose code waits on a promise (``ctx.promise``) of it."""
    out: dict[str, str] = {}
    for a in record.activations:
        if a.status != "absorbed":
            waits = a.status in ("pending", "running") and any(
                s.kind == "promise" and s.status == "waiting" for s in a.steps)
            out[a.agent] = "waiting" if waits and record.status not in FINISHED else a.status
    for name in record.waiting_on:
        if name in out and record.status not in FINISHED:
            out[name] = "waiting"
    return out


def graph_json(record: RunRecord, app: CompiledApp | None) -> dict[str, Any]:
    """Nodes (agents, with their status) and edges: the app's wiring when its code is at hand,
    else what the run's activations show (an edge from each cause's agent to the agent it caused)."""
    statuses = agent_statuses(record)
    if app is not None:
        nodes = [{"id": name, "status": statuses.get(name, "idle"), "approval": spec.approval, "entry": spec.entry}
                 for name, spec in app.specs.items()]
        pairs = [(e.source, e.target) for e in app.edges]
        source = "app"
    else:
        names = list(dict.fromkeys(a.agent for a in record.activations))
        nodes = [{"id": name, "status": statuses.get(name, "idle"), "approval": name in record.waiting_on,
                  "entry": False} for name in names]
        by_id = {a.id: a.agent for a in record.activations}
        pairs = [(by_id[a.cause], a.agent) for a in record.activations if a.cause in by_id]
        caused = {target for _, target in pairs}
        for node in nodes:
            node["entry"] = node["id"] not in caused
        source = "activations"
    edges = [{"source": s, "target": t} for s, t in dict.fromkeys(pairs)]
    return {"nodes": nodes, "edges": edges, "source": source}


def redacted(value: Any) -> Any:
    """``value`` with the user info and secret query values of every URL in its strings masked."""
    if isinstance(value, str):
        return redact_text(value) if "://" in value else value
    if isinstance(value, dict):
        return {redacted(k): redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


def record_json(record: RunRecord, app: CompiledApp | None, note: str | None = None) -> dict[str, Any]:
    """The run record as JSON (URLs' credentials masked), its graph, the approvals it waits on
    (agents needing approval) and ``finished``; ``note`` says what the page cannot show (e.g.
    no app code at hand)."""
    data: dict[str, Any] = redacted(asdict(record))
    data["run_id"] = record.run_id  # the page addresses the run by it
    graph = graph_json(record, app)
    approvals = {n["id"] for n in graph["nodes"] if n["approval"]}
    data["graph"] = graph
    data["approvals"] = [name for name in record.waiting_on if name in approvals or app is None]
    data["finished"] = record.status in FINISHED
    data["note"] = note
    if data["finished"]:  # what still waited when the run ended waits no more: it ended with the run
        for act in data.get("activations") or ():
            for step in act.get("steps") or ():
                if step.get("status") == "waiting":
                    step["status"] = record.status
    return data
