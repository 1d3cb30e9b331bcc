"""A server process started, watched and stopped by pid, and a free loopback port: what the dev
servers share (backend-neutral: nothing here needs an extra, so each backend can import it alone).

``RestateServer`` and ``TemporalDevServer`` subclass :class:`ServerProcess`; each gives the
command line, the environment and a readiness check, and this class launches the process with its
output in a log file, waits for readiness (failing early if the process exits), and stops it with
SIGTERM then SIGKILL, or kills it outright (a crash).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from ..errors import BackendError

__all__ = ["ServerProcess", "busy_ports", "free_port"]

_HOST = "127.0.0.1"
_POLL = 0.05


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def busy_ports(ports: Mapping[str, int]) -> list[str]:
    """The names of ``ports`` (name -> port) that something listens on, on 127.0.0.1 or on every
    address: a server started on them would fail, and the one already there would answer its
    readiness checks in its place."""
    busy = []
    for name, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
            try:
                sock.bind((_HOST, port))
            except OSError:
                busy.append(name)
    return busy


class ServerProcess(ABC):
    """One child process; subclasses define :meth:`command`, :meth:`is_ready` and :attr:`error`."""

    error: type[BackendError] = BackendError
    label = "the server"
    start_timeout = 20.0
    base_dir: Path
    log_file: Path

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def command(self) -> list[str]: ...

    def ports(self) -> dict[str, int]:
        """The ports the process listens on, by role (``{"ingress": 8080}``): :meth:`start` checks
        that they are free first."""
        return {}

    def environment(self) -> Mapping[str, str] | None:
        """The process's environment (None: inherit this one's)."""
        return None

    @abstractmethod
    def is_ready(self) -> bool:
        """Whether the process answers as it should once started (checked every 50 ms)."""

    @property
    def pid(self) -> int | None:
        """The process id while it runs (None before :meth:`start` and after it exited)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the process started here is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float | None = None) -> None:
        """Launch the process and wait until :meth:`is_ready` (at most ``timeout`` seconds,
        default :attr:`start_timeout`).

        Raises:
            BackendError (the subclass's ``error``): it is already running, one of its
                :meth:`ports` is in use, it exited during start-up, or was not ready within
                ``timeout`` seconds (then it is stopped); the message ends with its log.
        """
        if self.running:
            raise self.error(f"{self.label} is already running (pid {self.pid})")
        ports = self.ports()
        busy = busy_ports(ports)
        if busy:
            listed = ", ".join(f"{ports[name]} ({name})" for name in busy)
            raise self.error(f"{self.label} cannot start: port{'s' if len(busy) > 1 else ''} {listed} of {_HOST} "
                             f"{'are' if len(busy) > 1 else 'is'} in use by another program; stop it or choose "
                             "other ports")
        command = self.command()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- roost: starting {' '.join(command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(command, env=self.environment(), stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=self.base_dir)
        try:
            self._wait_ready(self.start_timeout if timeout is None else timeout)
        except BaseException:
            self.stop(timeout=5.0)  # SIGTERM first: an interrupted start need not crash the server
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise self.error(f"{self.label} exited with code {code} during start-up{self.log_tail()}")
            if self.is_ready() and self._proc.poll() is None:  # not another server answering in its place
                return
            if time.monotonic() >= deadline:
                raise self.error(f"{self.label} was not ready after {timeout:.1f} s{self.log_tail()}")
            time.sleep(_POLL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return f"; the end of {self.log_file}:\n" + "\n".join(text.splitlines()[-lines:])

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds (None: for ever) for the process to exit; its exit code, or
        None if it still runs (or was never started)."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Returns the exit code (None if not started)."""
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
        """SIGKILL (a crash: nothing is flushed) and wait for the process. Returns its exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait(timeout)
        return proc.returncode

    def restart(self, timeout: float | None = None) -> None:
        """Stop the process if it runs, then start it again (same ports and data)."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
