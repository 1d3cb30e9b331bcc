"""Temporal names for roost's runs, entities, task queues and activities.

- A run is a workflow of type ``roost.<app>`` whose workflow id is the run id.
- An entity keyed across runs (``keyed_by``) is a workflow of type ``roost.entity`` with id
  ``roost.<app>.<agent>/<key>``: it holds the entity's state and lets one activation in at a time.
- Each step is an activity of type ``<agent>.<step name>``, so ``temporal workflow show`` names
  the agent and the step.
- Workers poll the task queue ``roost.<app>`` unless told otherwise.
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


def default_task_queue(app: str) -> str:
    return f"roost.{app}"


def entity_workflow_id(app: str, agent: str, key: str) -> str:
    return f"roost.{app}.{agent}/{key}"


def activity_type(agent: str, step: str) -> str:
    return f"{agent}.{step}"
