"""Settings: which runtime prod mode uses and how to reach it.

Sources, later ones winning: ``[tool.roost]`` in ``pyproject.toml`` (or the top level of
``roost.toml``), then the table of the environment named by ``ROOST_ENV``
(``[tool.roost.env.<name>]`` / ``[env.<name>]``), then environment variables::

    runtime = "restate"                 # ROOST_RUNTIME: restate (default for prod) | temporal
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

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._redact import redact_url
from .errors import ConfigError

PROD_RUNTIMES = ("restate", "temporal")


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
    restate: RestateSettings = field(default_factory=RestateSettings)
    temporal: TemporalSettings = field(default_factory=TemporalSettings)
    source: str = "defaults"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold URLs with credentials


def _read(root: Path) -> tuple[dict[str, Any], str]:
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        data = tomllib.loads(pyproject.read_text()).get("tool", {}).get("roost")
        if data is not None:
            return data, str(pyproject)
    roost_toml = root / "roost.toml"
    if roost_toml.is_file():
        return tomllib.loads(roost_toml.read_text()), str(roost_toml)
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
    return Settings(runtime=runtime, env=name, restate=restate, temporal=temporal, source=source, raw=data)
