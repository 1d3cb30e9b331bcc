"""A scripted OpenAI-compatible model server on loopback, for testing LLM agents without a model.

::

    from roost.testing import FakeModelServer, Reply

    with FakeModelServer() as server:
        server.script("gpt-4o-mini",
                      Reply.tool_call("search", query="durable agents"),
                      Reply.answer(Review(score=8, notes="solid")))
        critic = agent("critic").contracts(input=Draft, output=Review).with_tools(search) \\
            .model("openai/gpt-4o-mini", base_url=server.base_url)
        ...
        assert len(server.requests("gpt-4o-mini")) == 2

Scripts are per model name (the request's ``model`` field; ``"*"`` serves any model without its
own script), so tests that share one server do not interfere. Replies are served in order;
``always`` gives the reply once a script is used up (or a function of the request body), and a
request with nothing left to answer gets HTTP 400 saying so. Every request's JSON body is logged
in order (``requests()``). With ``state_file`` the log and the script positions are saved after
every request and loaded by ``start()``, so a test can follow one script across processes.

Only the standard library: a ``ThreadingHTTPServer`` in a background thread.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import pydantic_core

ANY_MODEL = "*"


@dataclass(frozen=True)
class Reply:
    """One scripted answer. Build it with the class methods."""

    status: int = 200
    content: str | None = None
    calls: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    message: str | None = None
    error_type: str | None = None
    raw: str | None = None
    finish_reason: str | None = None

    @classmethod
    def answer(cls, value: Any) -> Reply:
        """Structured output: ``value`` (a model, dict or list) as JSON content."""
        return cls(content=pydantic_core.to_json(value).decode())

    @classmethod
    def text(cls, content: str, *, finish_reason: str | None = None) -> Reply:
        """Content exactly as given (malformed JSON, prose...)."""
        return cls(content=content, finish_reason=finish_reason)

    @classmethod
    def tool_call(cls, name: str, arguments: dict[str, Any] | str | None = None, /, **kwargs: Any) -> Reply:
        """The model calls one tool: ``Reply.tool_call("search", query="x")``; a string is sent as
        the raw arguments text (to test arguments that are not JSON)."""
        return cls.tool_calls((name, arguments if arguments is not None else kwargs))

    @classmethod
    def tool_calls(cls, *calls: tuple[str, dict[str, Any] | str]) -> Reply:
        """The model calls several tools in one turn: ``(name, arguments)`` pairs."""
        return cls(calls=tuple((n, a if isinstance(a, str) else json.dumps(a)) for n, a in calls))

    @classmethod
    def error(cls, status: int, message: str = "scripted error", *, retry_after: float | str | None = None,
              error_type: str | None = None) -> Reply:
        """An HTTP error with an OpenAI-style body; ``retry_after`` sets the Retry-After header."""
        headers = (("Retry-After", str(retry_after)),) if retry_after is not None else ()
        return cls(status=status, message=message, error_type=error_type, headers=headers)

    @classmethod
    def raw_body(cls, body: str, status: int = 200) -> Reply:
        """A response body exactly as given (e.g. not JSON at all)."""
        return cls(status=status, raw=body)

    @classmethod
    def slow(cls, seconds: float, reply: Reply | None = None) -> Reply:
        """``reply`` (default: an empty answer) after ``seconds``, e.g. longer than a client timeout."""
        return replace(reply or cls(content="{}"), delay=seconds)


Responder = Callable[[dict[str, Any]], Reply]


@dataclass
class _Script:
    replies: list[Reply] = field(default_factory=list)
    position: int = 0
    always: Reply | Responder | None = None
    in_flight: int = 0
    max_in_flight: int = 0


class FakeModelServer:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1 serving scripted replies.

    ``api_key``: if set, requests must carry ``Authorization: Bearer <api_key>`` (else HTTP 401,
    whose message echoes the token as OpenAI does, to test that it is redacted)."""

    def __init__(self, *, api_key: str | None = None, state_file: str | os.PathLike[str] | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_key = api_key
        self.state_file = Path(state_file) if state_file is not None else None
        self.host, self.port = host, port
        self._scripts: dict[str, _Script] = {}
        self._log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeModelServer:
        if self._http is not None:
            return self
        self._load()
        self._stopping.clear()
        self._http = ThreadingHTTPServer((self.host, self.port), _handler(self))
        self._http.daemon_threads = True
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, name="fake-model-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes replies that are waiting out a delay
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeModelServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """What to pass as ``base_url`` (or ``ROOST_LLM_BASE_URL``): ``http://127.0.0.1:<port>/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    # -- scripting ----------------------------------------------------------------------------

    def script(self, model: str, *replies: Reply) -> None:
        """Append replies to ``model``'s script (``"*"``: any model without its own)."""
        with self._lock:
            self._scripts.setdefault(model, _Script()).replies.extend(replies)

    def always(self, model: str, reply: Reply | Responder) -> None:
        """What ``model`` answers once its script is used up: a reply, or ``fn(body) -> Reply``."""
        with self._lock:
            self._scripts.setdefault(model, _Script()).always = reply

    def remaining(self, model: str) -> int:
        with self._lock:
            s = self._scripts.get(model)
            return 0 if s is None else len(s.replies) - s.position

    # -- what was asked ----------------------------------------------------------------------------

    def requests(self, model: str | None = None) -> list[dict[str, Any]]:
        """The JSON bodies received (for ``model``, or all), in order."""
        with self._lock:
            return [copy.deepcopy(e["body"]) for e in self._log if model is None or e["model"] == model]

    def request_times(self, model: str | None = None) -> list[float]:
        """When each request arrived (``time.time()``), in order."""
        with self._lock:
            return [e["at"] for e in self._log if model is None or e["model"] == model]

    def max_in_flight(self, model: str) -> int:
        """The most requests for ``model`` that were being answered at the same time."""
        with self._lock:
            s = self._scripts.get(model)
            return 0 if s is None else s.max_in_flight

    # -- serving (called from handler threads) ------------------------------------------------

    def _take(self, body: Any, authorization: str | None) -> tuple[Reply, str, int, _Script | None]:
        model = str(body.get("model")) if isinstance(body, dict) else ""
        with self._lock:
            self._log.append({"model": model, "at": time.time(), "body": body})
            n = len(self._log)
            script = self._scripts.get(model) or self._scripts.get(ANY_MODEL)
            if self.api_key is not None and authorization != f"Bearer {self.api_key}":
                token = (authorization or "").removeprefix("Bearer ")
                reply = Reply.error(401, f"Incorrect API key provided: {token}.", error_type="invalid_request_error")
            elif script is None or (script.position >= len(script.replies) and script.always is None):
                reply = Reply.error(400, f"fake model server: no scripted reply left for model {model!r} "
                                         f"(request #{n})", error_type="invalid_request_error")
            elif script.position < len(script.replies):
                reply = script.replies[script.position]
                script.position += 1
            elif isinstance(script.always, Reply):
                reply = script.always
            else:
                assert script.always is not None
                reply = script.always(copy.deepcopy(body))
            if script is not None:
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            self._save()
        return reply, model, n, script

    def _done(self, script: _Script | None) -> None:
        if script is not None:
            with self._lock:
                script.in_flight -= 1

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds``; False if the server is stopping."""
        return not self._stopping.wait(seconds)

    # -- persistence ------------------------------------------------------------------------------

    def _save(self) -> None:
        if self.state_file is None:
            return
        data = {"positions": {m: s.position for m, s in self._scripts.items()}, "requests": self._log}
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.state_file)

    def _load(self) -> None:
        if self.state_file is None or not self.state_file.exists():
            return
        data = json.loads(self.state_file.read_text())
        with self._lock:
            self._log = list(data.get("requests", []))
            for model, position in data.get("positions", {}).items():
                self._scripts.setdefault(model, _Script()).position = int(position)


def completion(reply: Reply, model: str, n: int) -> dict[str, Any]:
    """The chat completion a 200 reply stands for."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.calls:
        message["tool_calls"] = [
            {"id": f"call_{n}_{i}", "type": "function", "function": {"name": name, "arguments": args}}
            for i, (name, args) in enumerate(reply.calls)
        ]
    finish = reply.finish_reason or ("tool_calls" if reply.calls else "stop")
    size = len(reply.content or "") // 4 + 1
    return {
        "id": f"chatcmpl-fake-{n}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": 10, "completion_tokens": size, "total_tokens": 10 + size},
    }


def _handler(server: FakeModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            pass  # quiet: tests read the request log instead

        def _send(self, status: int, body: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
            data = body.encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                self.close_connection = True

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path.rstrip("/").endswith("/models"):
                with server._lock:
                    models = [m for m in server._scripts if m != ANY_MODEL]
                self._send(200, json.dumps({"object": "list", "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "roost-fake"} for m in models]}))
            else:
                self._send(404, json.dumps({"error": {"message": f"no route {self.path}", "type": "not_found"}}))

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, json.dumps({"error": {"message": f"no route {self.path}", "type": "not_found"}}))
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError as exc:
                self._send(400, json.dumps({"error": {"message": f"request body is not JSON: {exc}"}}))
                return
            reply, model, n, script = server._take(body, self.headers.get("Authorization"))
            try:
                if reply.delay and not server._wait(reply.delay):
                    self.close_connection = True
                    return
                if reply.raw is not None:
                    self._send(reply.status, reply.raw, reply.headers)
                elif reply.status != 200:
                    error = {"message": reply.message or "error", "type": reply.error_type or "server_error",
                             "param": None, "code": None}
                    self._send(reply.status, json.dumps({"error": error}), reply.headers)
                else:
                    self._send(200, json.dumps(completion(reply, model, n)), reply.headers)
            finally:
                server._done(script)

    return Handler
