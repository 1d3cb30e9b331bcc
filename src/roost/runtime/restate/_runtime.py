"""RestateRuntime: runs apps on a Restate server (the default for ``mode="prod"``)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import quote

import httpx

from ..._config import RestateSettings, load_settings
from ..._graph import CompiledApp
from ..._redact import redact_text, redact_url
from ...errors import (
    BackendError,
    CancelError,
    ConfigError,
    PromiseError,
    RunConflictError,
    RunNotFoundError,
    RunTimeoutError,
)
from ...result import FINISHED, ActivationRecord, RunRecord, StepRecord
from .._base import DurableRuntime, PruneReport, RunSummary, Submission
from ._endpoint import EndpointServer, release, serve_app
from ._names import RUN_PATTERN, run_service
from ._retention import prune_note
from ._server import aadmin_query
from ._workflow import CHUNK, LIVE, chunk_number

_log = logging.getLogger("roost.restate")
RESOLVE_WAIT = 10.0  # seconds to wait for the workflow's answer before leaving the resolution to Restate


class RestateRuntime(DurableRuntime):
    """Talks to Restate's ingress; unless ``serve=False``, also serves the registered apps from
    this process (HTTP/2, hypercorn) and registers them with Restate's admin API."""

    name = "restate"

    def __init__(self, *, ingress: str | None = None, admin: str | None = None, endpoint: str | None = None,
                 serve: bool | None = None, identity_keys: list[str] | None = None) -> None:
        base = load_settings().restate
        self.settings = RestateSettings(
            ingress=(ingress or base.ingress).rstrip("/"),
            admin=(admin or base.admin).rstrip("/"),
            endpoint=endpoint or base.endpoint,
            serve=base.serve if serve is None else serve,
            identity_keys=identity_keys if identity_keys is not None else base.identity_keys,
        )
        self.apps: dict[str, CompiledApp] = {}
        self.app_refs: dict[str, str | None] = {}
        self._client: httpx.AsyncClient | None = None
        self._servers: list[EndpointServer] = []
        self._run_apps: dict[str, str] = {}  # run id -> app, for runs submitted here
        self._submitted: dict[str, dict[str, Any]] = {}
        """Runs submitted here whose workflow may not have written its record yet: their record
        until it has (a run is 'running' from the moment Restate accepted it)."""

    def register(self, app: CompiledApp, app_ref: str | None = None) -> None:
        self.apps[app.name] = app
        self.app_refs[app.name] = app_ref

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise ConfigError("the restate runtime is not open")
        return self._client

    async def open(self) -> None:
        if self._client is not None:
            return
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(30.0))
        if self.settings.serve:
            for name, app in self.apps.items():
                server, _ = await self._guard(serve_app(
                    app, endpoint=self.settings.endpoint, admin=self.settings.admin, app_ref=self.app_refs.get(name),
                    identity_keys=self.settings.identity_keys))
                self._servers.append(server)

    async def close(self) -> None:
        for server in self._servers:
            await release(server)
        self._servers.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _guard(self, awaitable: Any) -> Any:
        """Translate transport failures into roost errors (users never see httpx's)."""
        try:
            return await awaitable
        except httpx.ConnectError as exc:
            raise BackendError(
                f"cannot reach Restate (ingress {redact_url(self.settings.ingress)}, admin {redact_url(self.settings.admin)}): "
                f"{redact_text(str(exc))}. "
                "Start a local server with 'roost dev restate', or set ROOST_RESTATE_INGRESS/ROOST_RESTATE_ADMIN"
            ) from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"talking to Restate failed: {type(exc).__name__}: {redact_text(str(exc))}") from exc

    async def _post(self, path: str, body: Any) -> httpx.Response:
        resp: httpx.Response = await self._guard(self.client.post(f"{self.settings.ingress}/{path}", json=body))
        return resp

    async def _state_rows(self, where: str) -> list[dict[str, Any]]:
        """Rows of the run workflows' state, read through the admin API: no endpoint needed."""
        rows: list[dict[str, Any]] = await self._guard(aadmin_query(
            self.settings.admin,
            f"SELECT service_name, service_key, key, value_utf8 FROM state WHERE service_name LIKE '{RUN_PATTERN}' "
            f"{where}", client=self.client))
        return rows

    async def _fetch(self, run_id: str) -> dict[str, Any] | None:
        """The run's record ({"run": ..., "activations": [...]}) from its workflow's state."""
        app = self._run_apps.get(run_id)
        if app is not None and self._servers:
            # Served here: ask the workflow's shared handler (fast); SQL is for the rest.
            resp = await self._post(f"{run_service(app)}/{_quote(run_id)}/get", None)
            if resp.status_code == 200 and resp.content:
                data: dict[str, Any] | None = resp.json()
                if data is not None:
                    self._submitted.pop(run_id, None)
                    return data
                return self._accepted(run_id)
        rows = await self._state_rows(f"AND service_key = '{_sql(run_id)}'")
        by_app: dict[str, dict[str, Any]] = {}
        chunks: dict[str, list[tuple[int, str]]] = {}
        for row in rows:
            if not row.get("value_utf8"):
                continue
            entry = by_app.setdefault(row["service_name"], {"run": None, "activations": []})
            if row["key"] == "run":
                entry["run"] = json.loads(row["value_utf8"])
            elif row["key"].startswith(CHUNK):
                chunks.setdefault(row["service_name"], []).append((chunk_number(row["key"]), row["value_utf8"]))
            elif row["key"] == LIVE:  # executing now: read first, any chunk's record is newer
                chunks.setdefault(row["service_name"], []).append((-1, row["value_utf8"]))
        for service, parts in chunks.items():
            records: dict[str, Any] = {}
            for _, raw in sorted(parts):
                records.update((r["id"], r) for r in json.loads(raw))  # a later chunk has the newer record
            by_app[service]["activations"] = list(records.values())
        found = [e for e in by_app.values() if e["run"] is not None]
        if len(found) > 1:  # the same run id in several apps: prefer one this runtime serves
            found = [e for e in found if e["run"]["app"] in self.apps] or found
        if found:
            return found[0]
        return self._accepted(run_id)

    def _accepted(self, run_id: str) -> dict[str, Any] | None:
        """The record of a run submitted here that Restate accepted but has not started yet."""
        sub = self._submitted.get(run_id)
        if sub is None:
            return None
        return {"run": {**sub, "run_id": run_id, "status": "running", "error": None, "finished_at": None,
                        "waiting": [], "waits": 0, "activations": 0}, "activations": []}

    async def _run(self, run_id: str) -> dict[str, Any] | None:
        """The run's own record (status, app, input), without its activations."""
        app = self._run_apps.get(run_id)
        if app is not None and self._servers:
            return (await self._fetch(run_id) or {}).get("run")
        rows = await self._state_rows(f"AND service_key = '{_sql(run_id)}' AND key = 'run'")
        runs: list[dict[str, Any]] = [json.loads(r["value_utf8"]) for r in rows if r.get("value_utf8")]
        if len(runs) > 1:
            runs = [r for r in runs if r["app"] in self.apps] or runs
        if runs:
            return runs[0]
        accepted = self._accepted(run_id)
        return dict(accepted["run"]) if accepted else None

    # -- runs -------------------------------------------------------------------------------

    async def submit(self, submission: Submission) -> bool:
        app, run_id = submission.app, submission.run_id
        self.register(app, self.app_refs.get(app.name))
        body = {
            "app": app.name, "fingerprint": app.fingerprint, "input": json.loads(submission.input_json),
            "input_hash": submission.input_hash, "created_at": time.time(),
            "entries": [[agent, payload] for agent, payload in submission.entries],
        }
        # One invocation runs the whole run; a workflow runs once per key, so a second submit
        # of the same run id is answered "PreviouslyAccepted" and starts nothing.
        resp = await self._post(f"{run_service(app.name)}/{_quote(run_id)}/run/send", body)
        if resp.status_code not in (200, 202):
            raise BackendError(f"Restate refused to start run {run_id!r} ({resp.status_code}): {resp.text}")
        self._run_apps[run_id] = app.name
        created = (resp.json() if resp.content else {}).get("status") != "PreviouslyAccepted"
        if created:
            self._submitted[run_id] = body
        if not created:
            run = await self._run(run_id)
            if run is not None and (run["app"] != app.name or run["input_hash"] != submission.input_hash):
                raise RunConflictError(
                    f"run id {run_id!r} is already used by a run of app {run['app']!r} with a different input; "
                    "a run id names one run: use a new id for new input", run_id=run_id)
        return created

    async def _app_of(self, run_id: str) -> str:
        app = self._run_apps.get(run_id)
        if app is None:
            run = await self._run(run_id)
            if run is None:
                raise RunNotFoundError(run_id, f"on Restate at {redact_url(self.settings.ingress)}")
            app = self._run_apps[run_id] = str(run["app"])
        return app

    async def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        app = await self._app_of(run_id)
        url = f"{self.settings.ingress}/restate/workflow/{run_service(app)}/{_quote(run_id)}/attach"
        try:
            resp = await asyncio.wait_for(self._attach(url), timeout)
        except TimeoutError:
            raise RunTimeoutError(f"run {run_id!r} did not finish within {timeout} s; it is not cancelled: it goes "
                                  "on in Restate", run_id=run_id) from None
        if resp.status_code == 404:
            raise RunNotFoundError(run_id, f"on Restate at {redact_url(self.settings.ingress)}")
        final = resp.json() if resp.status_code == 200 and resp.content else None
        if isinstance(final, dict) and "activations" in final:
            return _record(run_id, final)  # small runs return their whole record
        record = await self.get(run_id)
        if resp.status_code != 200 and record.status not in FINISHED:
            # The workflow failed before its record said so (roost could not write it): its failure says why.
            message = resp.json().get("message", resp.text) if resp.content else f"HTTP {resp.status_code}"
            record.status = "failed"
            record.error = {"agent": "-", "step": None, "attempts": 1, "error_type": "RunFailed",
                            "error_message": str(message)}
        return record

    async def _attach(self, url: str) -> httpx.Response:
        """Wait on the run's workflow; a connection lost to a restarting server is re-attached."""
        while True:
            try:
                resp: httpx.Response = await self.client.get(url, timeout=httpx.Timeout(30.0, read=None))
                return resp
            except httpx.TransportError as exc:
                _log.info("lost the connection to Restate while waiting (%r); attaching again", exc)
                await asyncio.sleep(0.5)

    async def get(self, run_id: str) -> RunRecord:
        data = await self._fetch(run_id)
        if data is None:
            raise RunNotFoundError(run_id, f"on Restate at {redact_url(self.settings.ingress)}")
        return _record(run_id, data)

    async def list_runs(self, limit: int = 50) -> list[RunSummary]:
        rows = await self._state_rows("AND key = 'run'")
        runs = sorted((json.loads(r["value_utf8"]) for r in rows if r.get("value_utf8")),
                      key=lambda r: r["created_at"], reverse=True)[:limit]
        return [RunSummary(r["run_id"], r["app"], _status(r), r["created_at"], r.get("finished_at"), "restate",
                           str(r.get("fingerprint") or "")[:8] or None) for r in runs]

    async def prune(self, older_than: float, *, dry_run: bool = False) -> PruneReport:
        return PruneReport(0, prune_note(self.settings.admin))  # Restate applies the workflow retention

    async def resolve(self, run_id: str, name: str, value: Any) -> None:
        app = await self._app_of(run_id)
        if not (self._servers and app in self.apps):
            # Not served here: the call below may wait for an endpoint, so refuse a finished run now.
            run = await self._run(run_id)
            if run is not None and run["status"] in FINISHED:
                raise PromiseError(f"run {run_id!r} is {run['status']}: nothing waits for {name!r}", run_id=run_id)
        # A call to the workflow's shared handler, which resolves the workflow's durable promise
        # (Restate refuses a second resolution). If no endpoint serves the app right now, Restate
        # keeps the call and runs it once one does: stop waiting.
        path = f"{run_service(app)}/{_quote(run_id)}/resolve"
        try:
            resp = await self.client.post(f"{self.settings.ingress}/{path}", json={"name": name, "value": value},
                                          timeout=httpx.Timeout(30.0, read=RESOLVE_WAIT))
        except httpx.ReadTimeout:
            _log.info("no endpoint answered resolving %r of run %r yet; Restate applies it when one does", name, run_id)
            return
        except httpx.HTTPError as exc:
            raise BackendError(f"talking to Restate failed: {type(exc).__name__}: {redact_text(str(exc))}") from exc
        answer = resp.json() if resp.status_code == 200 and resp.content else {"error": resp.text}
        error = answer.get("error")
        if error == "resolved":
            raise PromiseError(f"{name!r} of run {run_id!r} is resolved already", run_id=run_id)
        if error == "finished":
            raise PromiseError(f"run {run_id!r} is {answer.get('status')}: nothing waits for {name!r}", run_id=run_id)
        if error == "not_found":
            raise RunNotFoundError(run_id, f"on Restate at {redact_url(self.settings.ingress)} (app {app!r})")
        if error == "refused":
            raise PromiseError(f"run {run_id!r}: {answer.get('message')}", run_id=run_id)
        if error == "reserved":
            raise PromiseError(f"{name!r} is a name roost keeps for itself, not a promise of run {run_id!r}",
                               run_id=run_id)
        if error:
            raise BackendError(f"Restate refused to resolve {name!r} of run {run_id!r}: {error}")

    async def cancel(self, run_id: str, reason: str | None = None) -> None:
        """Restate's own cancellation of the run's invocation: the workflow turns it into the run
        engine's CancelRequested (so ``restate invocations cancel`` cancels a run the same way)."""
        app = await self._app_of(run_id)
        run = await self._run(run_id)
        status = str((run or {}).get("status", "running"))
        if status == "cancelled":
            return
        if status in FINISHED:
            raise CancelError(f"run {run_id!r} is {status}: there is nothing to cancel", run_id=run_id)
        rows = await self._guard(aadmin_query(
            self.settings.admin,
            f"SELECT id, status FROM sys_invocation WHERE target_service_name = '{run_service(app)}' "
            f"AND target_service_key = '{_sql(run_id)}' AND target_handler_name = 'run'", client=self.client))
        live = [r["id"] for r in rows if r.get("status") != "completed"]
        if not live:
            raise CancelError(f"run {run_id!r} has no invocation left to cancel on Restate", run_id=run_id)
        for invocation in live:
            resp = await self._guard(self.client.patch(f"{self.settings.admin}/invocations/{invocation}/cancel"))
            if resp.status_code == 404:  # an older server: the same through DELETE
                resp = await self._guard(self.client.delete(f"{self.settings.admin}/invocations/{invocation}",
                                                            params={"mode": "cancel"}))
            if resp.status_code >= 300 and resp.status_code != 404:
                raise BackendError(f"Restate refused to cancel run {run_id!r} ({resp.status_code}): {resp.text}")

    async def await_waiting(self, run_id: str) -> list[str] | None:
        """Blocks on the workflow's shared ``waiting`` handler: no polling (see RunHandle.approval)."""
        app = await self._app_of(run_id)
        resp = await self._guard(self.client.post(
            f"{self.settings.ingress}/{run_service(app)}/{_quote(run_id)}/waiting", json=None,
            timeout=httpx.Timeout(30.0, read=None)))
        if resp.status_code != 200:
            return None  # not served yet: the caller polls
        names: list[str] | None = resp.json() if resp.content else None
        return names

    async def resume(self, app: CompiledApp, run_id: str) -> None:
        # Restate resumes invocations by itself once an endpoint serves them again.
        self.register(app, self.app_refs.get(app.name))
        if await self._run(run_id) is None:
            raise RunNotFoundError(run_id, f"on Restate at {redact_url(self.settings.ingress)}")


def _record(run_id: str, data: dict[str, Any]) -> RunRecord:
    run = data["run"]
    acts = [
        ActivationRecord(
            id=a["id"], agent=a["agent"], kind=a.get("kind", "?"), status=a["status"], cause=a.get("cause"),
            started_at=a.get("started"), finished_at=a.get("finished"), attempts=a.get("attempts") or 1,
            output=a.get("output"), error=a.get("error"),
            steps=[StepRecord(_position(s["position"]), s["kind"], s["name"], s["status"], s["attempts"],
                              s.get("started"), s.get("finished"), s.get("value")) for s in a.get("steps") or ()],
        )
        for a in data.get("activations", [])
    ]
    return RunRecord(run_id=run_id, app=run["app"], status=_status(run), runtime="restate", input=run.get("input"),
                     created_at=run["created_at"], finished_at=run.get("finished_at"), error=run.get("error"),
                     activations=acts, waiting_on=list(run.get("waiting", [])))


def _position(value: Any) -> int | str:
    text = str(value)
    return int(text) if text.isdigit() else text


def _status(run: dict[str, Any]) -> str:
    return "waiting" if run["status"] == "running" and run.get("waiting") else str(run["status"])


def _sql(text: str) -> str:
    return text.replace("'", "''")


def _quote(key: str) -> str:
    return quote(key, safe="")
