"""Settings: which runtime prod mode uses and how to reach it.

Sources, later ones winning: ``[tool.roost]`` in ``pyproject.toml`` (or the top level of
``roost.toml``), then the table of the environment named by ``ROOST_ENV``
(``[tool.roost.env.<name>]`` / ``[env.<name>]``), then environment variables::

    runtime = "restate"                 # ROOST_RUNTIME: restate (default for prod) | temporal
    retention = "7d"                    # ROOST_RETENTION: how long finished runs are kept ("forever": no pruning)
    [tool.roost.restate]
    ingress = "http://127.0.0.1:8080"   # ROOST_RESTATE_INGRESS
    admin = "http://127.0.0.1:9070"     # ROOST_RESTATE_ADMIN
    endpoint = "http://127.0.0.1:9080"  # ROOST_RESTATE_ENDPOINT: where this process serves the app
    serve = true                        # ROOST_RESTATE_SERVE: serve the app from the process that runs it
    identity_keys = []                  # ROOST_RESTATE_IDENTITY_KEYS (comma-separated)
    [tool.roost.temporal]
    address = "127.0.0.1:7233"          # ROOST_TEMPORAL_ADDRESS: the frontend's host:port
    namespace = "default"               # ROOST_TEMPORAL_NAMESPACE
    task_queue = ""                     # ROOST_TEMPORAL_TASK_QUEUE (default: roost.<app>)
    serve = true                        # ROOST_TEMPORAL_SERVE: run a worker in the process that runs the app
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from ._redact import redact_url
from .errors import ConfigError

PROD_RUNTIMES = ("restate", "temporal")
DEFAULT_RETENTION = 7 * 86400.0
"""Seconds a finished run is kept (7 days) unless the ``retention`` setting says otherwise."""
FOREVER = "forever"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)

Duration = str | int | float | timedelta


def parse_duration(value: Duration, what: str) -> float:
    """Seconds in ``value``: a number of seconds, a ``timedelta``, or a string such as ``90s``,
    ``30m``, ``12h`` or ``7d`` (a bare number is seconds). ConfigError names ``what`` otherwise."""
    seconds: float | None = None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is not None:
            seconds = float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{what} must be a duration such as 90s, 30m, 12h or 7d (or a number of seconds), "
                          f"got {value!r}")
    return seconds


def parse_retention(value: Duration | None, what: str = "retention") -> float | None:
    """Seconds a finished run is kept, from a duration (see :func:`parse_duration`) greater than
    zero; None for ``"forever"`` (finished runs are never pruned)."""
    if isinstance(value, str) and value.strip().lower() == FOREVER:
        return None
    if value is None:
        raise ConfigError(f"{what} must be a duration such as 7d, or {FOREVER!r}; got None")
    seconds = parse_duration(value, what)
    if seconds <= 0:
        raise ConfigError(f"{what} must be longer than 0 (use {FOREVER!r} to keep finished runs), got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``7d``, ``36h``, ``90m``, ``45s``: the largest unit that divides ``seconds`` exactly."""
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


@dataclass
class RestateSettings:
    ingress: str = "http://127.0.0.1:8080"
    admin: str = "http://127.0.0.1:9070"
    endpoint: str = "http://127.0.0.1:9080"
    serve: bool = True
    identity_keys: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # the URLs may carry credentials (user:password@, ?token=)
        return (f"RestateSettings(ingress={redact_url(self.ingress)!r}, admin={redact_url(self.admin)!r}, "
                f"endpoint={redact_url(self.endpoint)!r}, serve={self.serve!r}, "
                f"identity_keys=[{len(self.identity_keys)} key(s)])")


@dataclass
class TemporalSettings:
    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    task_queue: str | None = None
    serve: bool = True


@dataclass
class Settings:
    runtime: str = "restate"
    env: str | None = None
    retention: float | None = DEFAULT_RETENTION
    """Seconds a finished run is kept; None: forever."""
    restate: RestateSettings = field(default_factory=RestateSettings)
    temporal: TemporalSettings = field(default_factory=TemporalSettings)
    source: str = "defaults"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold URLs with credentials


def _read(root: Path) -> tuple[dict[str, Any], str]:
    for path, table in ((root / "pyproject.toml", True), (root / "roost.toml", False)):
        if not path.is_file():
            continue
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        if table:
            data = data.get("tool", {}).get("roost")
        if data is not None:
            return data, str(path)
    return {}, "defaults"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _retention(data: dict[str, Any], environ: Mapping[str, str], source: str) -> float | None:
    if environ.get("ROOST_RETENTION"):
        return parse_retention(environ["ROOST_RETENTION"], "ROOST_RETENTION")
    return parse_retention(data.get("retention", "7d"), f"the retention setting of {source}")


def load_retention(root: Path | None = None, env: Mapping[str, str] | None = None) -> float | None:
    """The ``retention`` setting alone (seconds; None: forever), for the embedded runtime, which
    needs no other setting (so a wrong prod setting does not stop local runs)."""
    environ = os.environ if env is None else env
    data, source = _read(root or Path.cwd())
    name = environ.get("ROOST_ENV")
    if name and isinstance(data.get("env", {}).get(name), dict):
        data = _merge(data, data["env"][name])
    return _retention(data, environ, source)


def load_settings(root: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """The settings in force for ``root`` (default: the current directory) and ``env``."""
    environ = os.environ if env is None else env
    data, source = _read(root or Path.cwd())
    name = environ.get("ROOST_ENV") or None
    envs = data.get("env", {})
    if name is not None:
        if name not in envs:
            raise ConfigError(f"ROOST_ENV={name!r} but {source} has no [env.{name}] table "
                              f"(known: {', '.join(sorted(envs)) or 'none'})")
        data = _merge(data, envs[name])
    r = data.get("restate", {})
    restate = RestateSettings(
        ingress=environ.get("ROOST_RESTATE_INGRESS") or r.get("ingress", RestateSettings.ingress),
        admin=environ.get("ROOST_RESTATE_ADMIN") or r.get("admin", RestateSettings.admin),
        endpoint=environ.get("ROOST_RESTATE_ENDPOINT") or r.get("endpoint", RestateSettings.endpoint),
        serve=_bool(environ.get("ROOST_RESTATE_SERVE", r.get("serve", True))),
        identity_keys=[k for k in environ.get("ROOST_RESTATE_IDENTITY_KEYS", "").split(",") if k]
        or list(r.get("identity_keys", [])),
    )
    t = data.get("temporal", {})
    temporal = TemporalSettings(
        address=environ.get("ROOST_TEMPORAL_ADDRESS") or t.get("address", TemporalSettings.address),
        namespace=environ.get("ROOST_TEMPORAL_NAMESPACE") or t.get("namespace", TemporalSettings.namespace),
        task_queue=environ.get("ROOST_TEMPORAL_TASK_QUEUE") or t.get("task_queue") or None,
        serve=_bool(environ.get("ROOST_TEMPORAL_SERVE", t.get("serve", True))),
    )
    runtime = (environ.get("ROOST_RUNTIME") or data.get("runtime") or "restate").lower()
    if runtime not in PROD_RUNTIMES + ("local",):
        raise ConfigError(f"runtime {runtime!r} (from ROOST_RUNTIME or {source}) is not one of local, restate, temporal")
    retention = _retention(data, environ, source)
    return Settings(runtime=runtime, env=name, retention=retention, restate=restate, temporal=temporal, source=source,
                    raw=data)
