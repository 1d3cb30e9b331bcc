"""Temporal names for roost's runs, entities, task queues and activities.

- A run is a workflow of type ``roost.<app>`` whose workflow id is the run id.
- An entity keyed across runs (``keyed_by``) is a workflow of type ``roost.entity`` with id
  ``roost.<app>.<agent>/<key>``: it holds the entity's state and lets one activation in at a time.
- Each step is an activity of type ``<agent>.<step name>``, so ``temporal workflow show`` names
  the agent and the step.
- Workers poll the task queue ``roost.<app>@<code version>`` unless told otherwise: each version
  of an app's code has its own, so a run is only ever replayed by the code that started it (a
  deploy never makes in-flight runs non-deterministic; see docs/operations.md, "Deploys").
- Entities keyed across runs outlive versions: their workflows run on ``roost.<app>.entities``,
  which every worker of the app polls, whatever its version.
"""

from __future__ import annotations

ENTITY_WORKFLOW = "roost.entity"
ENSURE_ENTITY = "roost.entity.acquire"
RESOLVE = "resolve"
RESOLVE_SIGNAL = "resolve-later"
RESOLVE_REFUSED = "refused: "
"""How the resolve update's validator starts the reason for a value or name the run refuses."""
RECORD_QUERY = "record"
AWAIT_WAITING = "await-waiting"
GRANTED_SIGNAL = "entity-granted"
ACQUIRE_SIGNAL = "acquire"
RELEASE_SIGNAL = "release"


def run_workflow(app: str) -> str:
    return f"roost.{app}"


def default_task_queue(app: str, version: str | None = None) -> str:
    return f"roost.{app}" if version is None else f"roost.{app}@{version}"


def entity_task_queue(base: str) -> str:
    """The task queue of the entity workflows of the apps whose unversioned task queue is ``base``."""
    return f"{base}.entities"


def entity_workflow_id(app: str, agent: str, key: str) -> str:
    return f"roost.{app}.{agent}/{key}"


def activity_type(agent: str, step: str) -> str:
    return f"{agent}.{step}"
