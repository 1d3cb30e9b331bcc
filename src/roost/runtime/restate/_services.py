"""The Restate services that serve an app.

- ``<app>.<agent>`` (Virtual Object, keyed by entity key): handler ``activate`` runs one
  activation through roost's shared activation logic, sends the messages its output produces
  and reports to the run's ledger. Its state is the entity's state.
- ``roost.<app>.ledger`` (Virtual Object, keyed by run id): the run's record, which messages
  are outstanding, durable promises (approvals) as awakeables.
- ``roost.<app>.run`` (Workflow, keyed by run id): completes when the ledger says the run is
  finished, so a client attaches to it to wait.

Each app has its own run services, so one app's endpoint never serves another's bookkeeping.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import restate

from ..._activation import Message, Outcome, entity_of, execute
from ..._graph import CompiledApp, message_id
from ...errors import StepFailedError, TerminalError
from .._base import RunAborted
from ._context import RestateContext, decode_message, encode_message
from ._names import ACTIVATE, agent_service, ledger_service, run_service

# How Restate retries an invocation whose endpoint failed or vanished (a killed process, a
# restart): quickly at first and at most every second, so a run resumes within about a second
# of its endpoint coming back. Never given up: roost's own errors are terminal, so only
# infrastructure failures are retried here.
RETRY = restate.InvocationRetryPolicy(
    initial_interval=timedelta(milliseconds=100), exponentiation_factor=2.0, max_interval=timedelta(seconds=1),
)


def _error(agent: str, step: str | None, attempts: int, exc: BaseException) -> dict[str, Any]:
    kind = getattr(exc, "kind", None) or type(exc).__name__
    return {"agent": agent, "step": step, "attempts": max(1, attempts), "error_type": kind, "error_message": str(exc)}


def agent_object(app: CompiledApp, agent: str) -> restate.VirtualObject:
    obj = restate.VirtualObject(agent_service(app.name, agent), invocation_retry_policy=RETRY)

    @obj.handler(name=ACTIVATE)
    async def activate(ctx: restate.ObjectContext, raw: dict[str, Any]) -> dict[str, Any]:
        msg = decode_message(raw)
        rctx = RestateContext(ctx, app, msg, ctx.key())
        outcome = Outcome("absorbed")
        error: dict[str, Any] | None = None
        try:
            outcome = await execute(app, rctx, msg, ctx.key())
        except RunAborted:
            outcome = Outcome("absorbed")
        except StepFailedError as exc:
            error = _error(agent, exc.step, exc.attempts, exc.cause)
        except Exception as exc:  # a roost or user error: recorded, then a terminal failure
            error = _error(agent, None, rctx.attempts, exc)
        status = "failed" if error else outcome.status
        routes = [] if (error or msg.kind == "call") else outcome.routes
        new = [
            type(msg)(message_id(r.target, msg.id, r.id_suffix), msg.run_id, r.target, r.kind, r.payload, msg.id, r.meta)
            for r in routes
        ]
        try:
            keyed = [(m, entity_of(app, m)) for m in new]
        except TerminalError as exc:  # a keyed_by function failed: nothing is sent
            error, status, new, keyed = _error(agent, None, rctx.attempts, exc), "failed", [], []
        report = {
            "id": msg.id, "agent": agent, "kind": msg.kind, "status": status, "cause": msg.cause,
            "output": outcome.output_json, "error": error, "attempts": rctx.attempts,
            "started": rctx.started, "finished": rctx.finished,
            "sent": rctx.produced, "routes": [m.id for m in new],
        }
        # A call, not a send: once the ledger knows a run failed, nothing new starts.
        answer = await ctx.generic_call(ledger_service(app.name), "report", json.dumps(report).encode(), key=msg.run_id)
        if not json.loads(answer).get("failed"):
            for m, key in keyed:
                rctx.deliver(m, key)
        if error is not None:
            raise restate.TerminalError(f"run {msg.run_id!r}, agent {agent!r}: {error['error_type']}: {error['error_message']}")
        return {"output": outcome.output_json, "status": status}

    return obj


def _finished(state: dict[str, Any]) -> bool:
    return set(state["expected"]) == set(state["done"])


def ledger_object(app: str) -> restate.VirtualObject:
    obj = restate.VirtualObject(ledger_service(app), invocation_retry_policy=RETRY)

    async def load(ctx: restate.ObjectSharedContext | restate.ObjectContext) -> dict[str, Any] | None:
        return await ctx.get("run", type_hint=dict)

    @obj.handler()
    async def start(ctx: restate.ObjectContext, sub: dict[str, Any]) -> dict[str, Any]:
        run = await load(ctx)
        if run is not None:
            return {"created": False, "input_hash": run["input_hash"], "app": run["app"]}
        entries = sub.pop("entries")
        run = {**sub, "status": "running", "error": None, "finished_at": None, "activations": {},
               "expected": [e["message"]["id"] for e in entries], "done": [], "waiters": {}, "promises": {},
               "waiting": []}
        ctx.set("run", run)
        for e in entries:
            ctx.generic_send(e["service"], ACTIVATE, json.dumps(e["message"]).encode(), key=e["key"])
        return {"created": True}

    @obj.handler()
    async def report(ctx: restate.ObjectContext, rep: dict[str, Any]) -> dict[str, Any]:
        run = await load(ctx)
        if run is None:
            raise restate.TerminalError(f"report for unknown run {ctx.key()!r}")
        run["count"] = run.get("count", 0) + 1
        if run["count"] > run["max_activations"] and run["error"] is None:
            run["error"] = {
                "agent": rep["agent"], "step": None, "attempts": 1, "error_type": "ActivationLimitError",
                "error_message": f"run {ctx.key()!r} went past its limit of {run['max_activations']} activations "
                f"(at agent {rep['agent']!r}); a loop's when= condition never turned false? "
                "Raise App(max_activations=...) if the run really needs more",
            }
        failed = run["error"] is not None
        # Messages sent by ctx.send/ctx.call are out already; routes are sent only if the run
        # has not failed (the answer tells the activation).
        produced = rep.pop("sent") + ([] if failed else rep["routes"])
        rep.pop("routes")
        run["activations"][rep["id"]] = rep
        if rep["id"] not in run["done"]:
            run["done"].append(rep["id"])
        run["expected"].extend(p for p in produced if p not in run["expected"])
        if rep.get("error") and not failed:
            run["error"] = rep["error"]
        run["waiting"] = [w for w in run["waiting"] if w["agent"] != rep["agent"] or w["activation"] != rep["id"]]
        if _finished(run):
            run["status"] = "failed" if run["error"] else "completed"
            run["finished_at"] = max([a["finished"] or 0 for a in run["activations"].values()] + [run["created_at"]])
            # The final record goes to the workflow, so a client attached to it needs no second read.
            ctx.generic_send(run_service(app), "finish", json.dumps(run).encode(), key=ctx.key())
        ctx.set("run", run)
        return {"failed": run["error"] is not None}

    @obj.handler()
    async def wait(ctx: restate.ObjectContext, req: dict[str, Any]) -> None:
        run = await load(ctx)
        if run is None:
            return
        name = req["name"]
        if name in run["promises"]:
            ctx.resolve_awakeable(req["awakeable"], run["promises"][name])
            return
        run["waiters"][name] = req["awakeable"]
        run["waiting"].append({"name": name, "agent": req["agent"], "activation": req.get("activation")})
        ctx.set("run", run)

    @obj.handler()
    async def resolve(ctx: restate.ObjectContext, req: dict[str, Any]) -> dict[str, Any]:
        run = await load(ctx)
        if run is None:
            return {"error": "not_found"}
        if run["status"] != "running":
            return {"error": "finished", "status": run["status"]}
        name = req["name"]
        if name in run["promises"]:
            return {"error": "resolved"}
        run["promises"][name] = req["value"]
        awakeable = run["waiters"].pop(name, None)
        if awakeable is not None:
            ctx.resolve_awakeable(awakeable, req["value"])
        run["waiting"] = [w for w in run["waiting"] if w["name"] != name]
        ctx.set("run", run)
        return {"ok": True, "woke": awakeable is not None}

    @obj.handler(kind="shared")
    async def get(ctx: restate.ObjectSharedContext, _: dict[str, Any] | None = None) -> dict[str, Any] | None:
        return await load(ctx)

    return obj


def run_workflow(app: str) -> restate.Workflow:
    wf = restate.Workflow(run_service(app), invocation_retry_policy=RETRY)

    @wf.main()
    async def run(ctx: restate.WorkflowContext, _: dict[str, Any]) -> dict[str, Any]:
        # The client has created the run's ledger; this completes when the ledger says so.
        outcome: dict[str, Any] = await ctx.promise("done", type_hint=dict).value()
        return outcome

    @wf.handler()
    async def finish(ctx: restate.WorkflowSharedContext, outcome: dict[str, Any]) -> None:
        await ctx.promise("done", type_hint=dict).resolve(outcome)

    return wf


def services(app: CompiledApp) -> list[restate.Service | restate.VirtualObject | restate.Workflow]:
    return [run_workflow(app.name), ledger_object(app.name), *(agent_object(app, name) for name in app.specs)]


def entry_messages(app: CompiledApp, run_id: str, entries: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for agent, payload in entries:
        msg = Message(f"{agent}:entry", run_id, agent, "entry", payload)
        out.append({"service": agent_service(app.name, agent), "key": entity_of(app, msg),
                    "message": json.loads(encode_message(msg))})
    return out
