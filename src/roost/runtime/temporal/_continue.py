"""Continue-as-new for long runs: what a run workflow hands to its next run.

Temporal caps a workflow's history (51,200 events or 50 MB, with warnings from 10,240 events).
A run whose history grows long continues as new: the workflow ends and a new run of the same
workflow id starts with everything the run needs, so the run goes on with a fresh history.

What is carried (compressed, in the new run's input):

- the run engine's events, in order: the new run rebuilds the engine by handling them again
  (its decisions come again, as after a crash on every runtime);
- the run's record (activations, steps, promises, what it waits on) and its run-scoped entities;
- per activation still running, the journal of what its ``ctx`` calls returned, by position
  (steps' outcomes, when sleeps end, promise values, replies of calls, sends made, the state of
  an entity keyed across runs that it holds). The new run starts those activations again; each
  ``ctx`` call found in the journal returns what it returned before, without running anything,
  and the first one not found goes on for real.

Before continuing, the workflow stops scheduling new activities and waits for those in flight, so
no step that finished is lost and none runs twice; timers, promise waits and calls are not waited
for (the journal carries them).
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

from temporalio import workflow

CARRY_LIMIT = 1_800_000
"""Largest carried state (bytes, compressed and base64), under Temporal's 2 MB payload limit. A run
whose state is larger does not continue as new (a warning is logged once)."""


def due(limit: int | None) -> bool:
    """Whether the current run's history is long enough to continue as new: past ``limit`` events
    (``TemporalRuntime(history_limit=...)``, sent with the run's input), else once Temporal
    suggests it (``is_continue_as_new_suggested``: thousands of events). Deterministic: it reads
    what the history says, the same on replay."""
    info = workflow.info()
    if limit is not None:
        return info.get_current_history_length() >= limit
    return info.is_continue_as_new_suggested()


def pack(value: Any) -> str:
    return base64.b64encode(zlib.compress(json.dumps(value, separators=(",", ":")).encode(), 6)).decode()


def unpack(data: str) -> Any:
    return json.loads(zlib.decompress(base64.b64decode(data)))
