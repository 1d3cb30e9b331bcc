"""A local ``restate-server`` process for development and tests, and its admin API.

Nothing here needs the Restate SDK: only the standard library and httpx.

- :func:`find_restate_server` / :func:`find_restate_cli` locate the binaries (``$ROOST_RESTATE_SERVER``
  / ``$ROOST_RESTATE_CLI``, then ``PATH``, then ``<root>/.roost/npm``) and install the npm packages
  there when they are missing.
- :class:`RestateServer` runs one single-node server bound to 127.0.0.1 with its own data directory
  and ports, waits until it is healthy, and stops, kills or restarts it by pid.
- :func:`register_deployment`, :func:`admin_query` (and their ``a``-prefixed async twins) talk to the
  admin API. Use the async ones when the deployment is served by the calling event loop: the server
  calls the deployment back while the registration request is open.

``python -m roost.runtime.restate._server --install`` installs the binaries when missing and prints
the server's path (the Makefile's ``test`` target runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from ..._redact import redact_text, redact_url
from ...errors import BackendError, ConfigError
from .._process import ServerProcess, free_port  # free_port: re-exported, tests and bench import it here

__all__ = [
    "ALWAYS_REPLAY_ENV",
    "RESTATE_VERSION",
    "RestateServer",
    "RestateServerError",
    "aadmin_query",
    "admin_query",
    "aregister_deployment",
    "binary_version",
    "find_restate_cli",
    "find_restate_server",
    "free_port",
    "install_command",
    "register_deployment",
    "wait_service",
]

RESTATE_VERSION = "1.7.12"
"""The restate-server / restate CLI version installed when missing."""

NPM_PREFIX = Path(".roost") / "npm"
"""Where the npm packages go, relative to the project root."""

ALWAYS_REPLAY_ENV = {"RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT": "0s",
                     "RESTATE_WORKER__INVOKER__ABORT_TIMEOUT": "5s"}
"""Server settings that make every invocation suspend whenever it waits on the server (after each
``ctx.run``, call, sleep...) and replay its journal from the start on the next step
(``worker.invoker.inactivity-timeout = 0s``), to expose non-deterministic handler code. An
invocation that cannot suspend (a step still running) is aborted after 5 s instead of 60 s and
replayed: what it is sent meanwhile (a cancellation) reaches the next attempt."""

NPM_INSTALL_TIMEOUT = 1800.0
"""Seconds allowed for ``npm install`` (the two binaries weigh about 450 MB)."""

_SERVER_ENV = "ROOST_RESTATE_SERVER"
_CLI_ENV = "ROOST_RESTATE_CLI"
_HOST = "127.0.0.1"
_POLL = 0.05


class RestateServerError(BackendError):
    """The restate-server process did not start, died, or its admin API refused a request."""


# -- binaries ---------------------------------------------------------------------------------------


def _platform_suffix() -> str:
    """The npm platform package suffix for this machine (``linux-x64``, ``darwin-arm64``...)."""
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system(), platform.system().lower())
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"{system}-{arch}"


def _npm_binary(root: Path, package: str, name: str) -> Path:
    return root / NPM_PREFIX / "node_modules" / "@restatedev" / f"{package}-{_platform_suffix()}" / "bin" / name


def install_command(root: Path | None = None) -> list[str]:
    """The ``npm install`` command that puts both binaries under ``<root>/.roost/npm``."""
    prefix = (root or Path.cwd()) / NPM_PREFIX
    return [
        "npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix),
        f"@restatedev/restate-server@{RESTATE_VERSION}", f"@restatedev/restate@{RESTATE_VERSION}",
    ]


def _install(root: Path, announce: Callable[[str], None] | None) -> None:
    command = install_command(root)
    shown = " ".join(command)
    npm = shutil.which("npm")
    if npm is None:
        raise ConfigError(f"restate-server is not installed and npm is not on PATH: install Node.js, then run: {shown}")
    if announce is not None:
        announce(f"installing restate-server {RESTATE_VERSION}: {shown}")
    (root / NPM_PREFIX).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SCARF_ANALYTICS": "false"}  # the package's install-time analytics hook
    try:
        done = subprocess.run([npm, *command[1:]], env=env, capture_output=True, text=True,
                              timeout=NPM_INSTALL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"npm install did not finish in {NPM_INSTALL_TIMEOUT:.0f} s; run it by hand: {shown}") from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()[-2000:]
        raise ConfigError(f"npm install failed (exit {done.returncode}); command: {shown}\n{output}")


def _find(env_var: str, exe: str, package: str, root: Path | None, install: bool,
          announce: Callable[[str], None] | None) -> Path:
    explicit = os.environ.get(env_var)
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"${env_var} is {explicit!r}, which is not an executable file")
        return path
    on_path = shutil.which(exe)
    if on_path is not None:
        return Path(on_path)
    root = root or Path.cwd()
    local = _npm_binary(root, package, exe)
    if local.is_file():
        return local
    if not install:
        raise ConfigError(f"{exe} not found (${env_var}, PATH, {local}); install it with: {' '.join(install_command(root))}")
    _install(root, announce)
    if not local.is_file():
        raise ConfigError(f"npm install finished but {local} is missing (is {_platform_suffix()} a platform "
                          f"restate publishes binaries for?); command: {' '.join(install_command(root))}")
    return local


def find_restate_server(install: bool = True, *, root: Path | None = None,
                        announce: Callable[[str], None] | None = None) -> Path:
    """The ``restate-server`` binary to run.

    Looks at ``$ROOST_RESTATE_SERVER``, then ``PATH``, then ``<root>/.roost/npm`` (``root`` defaults to
    the current directory). When none has it and ``install`` is true, runs :func:`install_command`
    (``announce`` receives a line before it starts: it can take minutes).

    Raises:
        ConfigError: not found and not installable (npm missing or failing), with the command to run.
    """
    return _find(_SERVER_ENV, "restate-server", "restate-server", root, install, announce)


def find_restate_cli(install: bool = True, *, root: Path | None = None,
                     announce: Callable[[str], None] | None = None) -> Path:
    """The ``restate`` CLI binary: like :func:`find_restate_server`, with ``$ROOST_RESTATE_CLI``."""
    return _find(_CLI_ENV, "restate", "restate", root, install, announce)


def binary_version(binary: Path) -> str:
    """The version a restate binary reports (``restate-server 1.7.12`` gives ``1.7.12``)."""
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {binary} --version: {exc}") from None
    words = done.stdout.split()
    return words[1] if len(words) >= 2 else done.stdout.strip()


def _another_free_port(taken: set[int]) -> int:
    """A free port not in ``taken`` (which it joins): the kernel may hand the same one out twice."""
    for _ in range(100):
        port = free_port()
        if port not in taken:
            taken.add(port)
            return port
    raise RestateServerError("no free TCP port on 127.0.0.1")


# -- the server process -----------------------------------------------------------------------------


class RestateServer(ServerProcess):
    """One single-node ``restate-server`` on 127.0.0.1, with its data under ``base_dir``.

    Ports left as None are picked free when the object is built and kept for its life, so
    :meth:`restart` (or a :meth:`kill` then :meth:`start`) comes back on the same addresses with the
    same data: registered deployments, journals and state survive.

    ``always_replay`` sets :data:`ALWAYS_REPLAY_ENV`: invocations suspend whenever they wait on the
    server and replay from the start for the next step. ``env`` adds or overrides server environment
    variables; ``RESTATE_*`` variables of this process are not passed on, so the server's settings
    are only the ones chosen here.

    Usage::

        with RestateServer(tmp / "restate") as server:
            register_deployment(server.admin_url, "http://127.0.0.1:9080")
            httpx.post(f"{server.ingress_url}/Greeter/greet", json="world")
    """

    error = RestateServerError
    label = "restate-server"

    def __init__(
        self,
        base_dir: Path,
        *,
        ingress_port: int | None = None,
        admin_port: int | None = None,
        node_port: int | None = None,
        always_replay: bool = False,
        log_file: Path | None = None,
        binary: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        taken = {p for p in (ingress_port, admin_port, node_port) if p}
        self.ingress_port = ingress_port or _another_free_port(taken)
        self.admin_port = admin_port or _another_free_port(taken)
        self.node_port = node_port or _another_free_port(taken)
        self.always_replay = always_replay
        self.log_file = Path(log_file).absolute() if log_file is not None else self.base_dir / "restate.log"
        self.binary = binary
        self.extra_env = dict(env or {})
        super().__init__()

    # -- addresses and state

    @property
    def ingress_url(self) -> str:
        """``http://127.0.0.1:<ingress port>``: where invocations are sent."""
        return f"http://{_HOST}:{self.ingress_port}"

    @property
    def admin_url(self) -> str:
        """``http://127.0.0.1:<admin port>``: deployments, SQL queries, health."""
        return f"http://{_HOST}:{self.admin_port}"

    def ports(self) -> dict[str, int]:
        return {"ingress": self.ingress_port, "admin": self.admin_port, "node": self.node_port}

    def environment(self) -> dict[str, str]:
        """The environment the server process gets."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_")}
        env.update({
            "RESTATE_DISABLE_TELEMETRY": "true",
            "RESTATE_LISTEN_MODE": "tcp",
            "RESTATE_INGRESS__BIND_ADDRESS": f"{_HOST}:{self.ingress_port}",
            "RESTATE_ADMIN__BIND_ADDRESS": f"{_HOST}:{self.admin_port}",
            "RESTATE_BIND_ADDRESS": f"{_HOST}:{self.node_port}",
            "RESTATE_DEFAULT_NUM_PARTITIONS": "4",
            "RESTATE_LOG_DISABLE_ANSI_CODES": "true",
        })
        if self.always_replay:
            env.update(ALWAYS_REPLAY_ENV)
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        """The command line that starts the server (finding, not installing, the binary)."""
        binary = self.binary or find_restate_server(install=False)
        return [str(binary), "--base-dir", str(self.base_dir), "--node-name", "n1", "--no-logo"]

    def is_ready(self) -> bool:
        """Admin ``/health`` and ingress ``/restate/health`` answer 200 and the partitions answer a
        ``sys_invocation`` query."""
        with httpx.Client(timeout=2.0) as client:
            urls = [f"{self.admin_url}/health", f"{self.ingress_url}/restate/health"]
            return all(_is_ok(client, url) for url in urls) and _partitions_ready(client, self.admin_url)

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"RestateServer({str(self.base_dir)!r}, ingress={self.ingress_url}, admin={self.admin_url}, {state})"


def _is_ok(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _partitions_ready(client: httpx.Client, admin_url: str) -> bool:
    """Whether the partition processors answer: /health says 200 a little before they do, and until
    then queries fail ("node lookup for partition 1 failed")."""
    try:
        response = client.post(f"{admin_url}/query", json={"query": "SELECT id FROM sys_invocation LIMIT 1"},
                                headers={"accept": "application/json"})
    except httpx.HTTPError:
        return False
    return response.status_code == 200


# -- admin API ---------------------------------------------------------------------------------------


def _deployment_body(uri: str, force: bool, use_http_11: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"uri": uri, "force": force}
    if use_http_11:
        body["use_http_11"] = True
    return body


def _checked(response: httpx.Response, what: str) -> Any:
    if response.status_code >= 300:
        try:
            detail = response.json().get("message", response.text)
        except ValueError:
            detail = response.text
        raise RestateServerError(f"{what} failed: HTTP {response.status_code}: {redact_text(str(detail))}")
    return response.json()


def _rows(payload: Any) -> list[dict[str, Any]]:
    rows = payload.get("rows") if isinstance(payload, dict) else None
    if not isinstance(rows, list):
        raise RestateServerError(f"unexpected admin query answer: {str(payload)[:200]}")
    return [dict(row) for row in rows]


def register_deployment(admin_url: str, uri: str, *, force: bool = True, use_http_11: bool = False,
                        timeout: float = 10.0) -> dict[str, Any]:
    """Register (``force``: or re-register) the deployment served at ``uri``; returns the admin's answer
    (``id``, ``services``...).

    The server calls ``uri`` back during the request, so the deployment must not be served by a loop
    this call blocks: from a coroutine, use :func:`aregister_deployment`.

    Raises:
        RestateServerError: the admin API refused it (unreachable deployment, incompatible change...).
    """
    with httpx.Client(timeout=timeout) as client:
        response = client.post(f"{admin_url}/deployments", json=_deployment_body(uri, force, use_http_11))
    return dict(_checked(response, f"registering {redact_url(uri)}"))


async def aregister_deployment(admin_url: str, uri: str, *, force: bool = True, use_http_11: bool = False,
                               timeout: float = 10.0) -> dict[str, Any]:
    """:func:`register_deployment` without blocking the event loop."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        response = await client.post(f"{admin_url}/deployments", json=_deployment_body(uri, force, use_http_11))
    return dict(_checked(response, f"registering {redact_url(uri)}"))


def admin_query(admin_url: str, sql: str, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Run a SQL query on the admin API (``sys_invocation``, ``sys_journal``, ``state``...); one dict a row.

    The admin answers JSON only when asked (else Arrow IPC), and leaves NULL columns out of a row:
    read optional columns with ``row.get(name)``.

    Raises:
        RestateServerError: the query was refused (SQL error, partitions not ready yet).
    """
    with httpx.Client(timeout=timeout) as client:
        response = client.post(f"{admin_url}/query", json={"query": sql}, headers={"accept": "application/json"})
    return _rows(_checked(response, "admin query"))


async def aadmin_query(admin_url: str, sql: str, *, timeout: float = 10.0,
                       client: httpx.AsyncClient | None = None) -> list[dict[str, Any]]:
    """:func:`admin_query` without blocking the event loop; pass ``client`` to reuse one (a new
    client loads the CA bundle, ~20 ms of CPU)."""
    if client is not None:
        response = await client.post(f"{admin_url}/query", json={"query": sql},
                                     headers={"accept": "application/json"}, timeout=timeout)
        return _rows(_checked(response, "admin query"))
    async with httpx.AsyncClient(timeout=timeout) as own:
        response = await own.post(f"{admin_url}/query", json={"query": sql}, headers={"accept": "application/json"})
    return _rows(_checked(response, "admin query"))


def wait_service(admin_url: str, service: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until the admin API lists ``service`` (GET ``/services/{service}`` answers 200); returns it.

    Raises:
        RestateServerError: not there within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                response = client.get(f"{admin_url}/services/{service}")
                if response.status_code == 200:
                    return dict(response.json())
            if time.monotonic() >= deadline:
                raise RestateServerError(f"service {service!r} is not registered at {redact_url(admin_url)} after {timeout:.1f} s")
            time.sleep(_POLL)


# -- python -m roost.runtime.restate._server ---------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Print the restate-server path; with ``--install``, install it first when missing."""
    parser = argparse.ArgumentParser(prog="python -m roost.runtime.restate._server",
                                     description="Find (and install) the restate-server binary roost uses.")
    parser.add_argument("--install", action="store_true", help="npm-install it under ROOT/.roost/npm when missing")
    parser.add_argument("--cli", action="store_true", help="print the restate CLI's path as well")
    parser.add_argument("--root", type=Path, default=None, help="the project directory (default: the current one)")
    args = parser.parse_args(argv)

    def announce(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        print(find_restate_server(args.install, root=args.root, announce=announce))
        if args.cli:
            print(find_restate_cli(args.install, root=args.root, announce=announce))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
