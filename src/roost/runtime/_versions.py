"""The version of an app's code, as every runtime names it for deploys.

A run is finished by the code version that started it: Restate registers each version at a
deployment URI of its own (``/v/<version>``), Temporal gives each version a task queue of its
own (``roost.<app>@<version>``), and the embedded runtime leaves the runs of other versions alone
(see docs/operations.md, "Deploys")."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .. import __version__
from .._graph import CompiledApp


def code_version(app: CompiledApp, app_ref: str | None) -> str:
    """Changes when the wiring, roost, or the source file that built the app changes
    (``ROOST_CODE_VERSION`` overrides it, e.g. with a git commit)."""
    explicit = os.environ.get("ROOST_CODE_VERSION")
    if explicit:
        return explicit
    h = hashlib.blake2b(digest_size=6)
    h.update(f"{app.name}|{app.fingerprint}|{__version__}".encode())
    if app_ref and Path(app_ref).is_file():
        h.update(Path(app_ref).read_bytes())
    return h.hexdigest()
