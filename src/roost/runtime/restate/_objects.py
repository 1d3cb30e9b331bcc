"""``keyed_by`` agents: one Virtual Object per agent, keyed by the entity key.

The run's workflow calls ``<app>.<agent>/<key>/activate`` with the activation. The object runs
it (its ``ctx`` calls go through a Driver of its own, so branches replay deterministically),
keeps the entity's state in the object's state (across runs, one activation per key at a time),
and answers with the outcome and the messages it sent, which the workflow hands to the engine.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import restate

from ..._engine import Activation, MessageSent, Reply, decode_activation, failed_activation
from ..._graph import CompiledApp
from ...errors import UsageError
from .._branches import detached
from ._context import Host, ObjectState, RunContext, restate_signal, run_activation
from ._driver import Driver
from ._names import ACTIVATE, agent_service, run_service
from ._retry import RETRY


class ObjectRun(Host):
    """One keyed activation inside its Virtual Object invocation."""

    def __init__(self, ctx: restate.ObjectContext, app: CompiledApp, run_id: str) -> None:
        self.ctx = ctx
        self.app = app
        self.run_id = run_id
        self.driver = Driver(ctx)
        self.steps: set[asyncio.Task[Any]] = set()
        self.sends: list[dict[str, Any]] = []

    def aborted(self, activation: str) -> bool:
        return False

    def sent(self, event: MessageSent) -> asyncio.Future[Reply] | None:
        if event.kind == "call":
            raise UsageError(f"run {self.run_id!r}: agent {event.sender.split(':')[0]!r} is keyed_by, and on Restate a "
                             f"keyed agent cannot ctx.call another agent ({event.target!r}); use ctx.send, or call "
                             "from an agent that is not keyed")
        self.sends.append({"position": event.position, "target": event.target, "payload": event.payload,
                           "deliver_at": event.deliver_at})
        return None

    def promise(self, name: str) -> Any:
        return self.ctx.generic_call(run_service(self.app.name), "promise", json.dumps(name).encode(), key=self.run_id)

    def promised(self, value: Any) -> Any:
        return json.loads(value) if value else None

    async def main(self, spec: Activation) -> dict[str, Any]:
        try:
            return await self._main(spec)
        except Exception as exc:
            if restate_signal(exc):
                raise  # the connection to Restate is gone: this attempt ends, Restate retries the invocation
            event = failed_activation(spec, None, 1, exc)  # roost's own code failed: the run learns why, never a retry loop
            assert event.error is not None
            return {"status": "failed", "output": None, "error": event.error.to_json(), "sent": [], "attempts": 1,
                    "started": None, "finished": None, "steps": []}

    async def _main(self, spec: Activation) -> dict[str, Any]:
        ctx = RunContext(self, spec, self.ctx.key())
        task = self.driver.spawn(run_activation(ctx, spec), f"roost:{spec.id}", context=detached())
        try:
            while not task.done():
                await self.driver.settle()
                if task.done():
                    break
                self.driver.issue()
                await self.driver.wait()
        finally:
            self.driver.cancel()
        try:
            event = task.result()
        except Exception as exc:  # roost's own code failed around the activation
            event = failed_activation(spec, None, 1, exc)
            ctx.attempts = 1
        state = ctx.state
        if event.status == "completed" and isinstance(state, ObjectState):
            for key, raw in state.writes.items():
                if raw is None:
                    self.ctx.clear(key)
                else:
                    self.ctx.set(key, raw)
        return {"status": event.status, "output": event.output, "error": event.error.to_json() if event.error else None,
                "sent": self.sends if event.status == "completed" else [], "attempts": ctx.attempts,
                "started": ctx.started, "finished": ctx.finished, "steps": ctx.steps}


def agent_object(app: CompiledApp, agent: str) -> restate.VirtualObject:
    obj = restate.VirtualObject(agent_service(app.name, agent), invocation_retry_policy=RETRY)

    @obj.handler(name=ACTIVATE)
    async def activate(ctx: restate.ObjectContext, body: dict[str, Any]) -> dict[str, Any]:
        return await ObjectRun(ctx, app, str(body["run_id"])).main(decode_activation(body["activation"]))

    return obj
