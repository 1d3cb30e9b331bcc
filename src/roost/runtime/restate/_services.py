"""The Restate services that serve an app.

- ``roost.<app>.run`` (Workflow, keyed by run id): the whole run in one invocation, driving
  the run engine (``_workflow.py``).
- ``<app>.<agent>`` (Virtual Object, keyed by entity key), only for ``keyed_by`` agents: their
  activations, with state that lives across runs (``_objects.py``).

Each app has its own services, so one app's endpoint never serves another's runs.
"""

from __future__ import annotations

import restate

from ..._graph import CompiledApp
from ._objects import agent_object
from ._retention import configured
from ._workflow import run_workflow


def services(app: CompiledApp) -> list[restate.Workflow | restate.VirtualObject]:
    keyed = [name for name, spec in app.specs.items() if spec.key_fn is not None]
    return [run_workflow(app, retention=configured()), *(agent_object(app, name) for name in keyed)]
