"""tests/crash/branches_pipeline.py's agent on Restate: a serving process, runnable as a script.

    python tests/crash/branches_restate_pipeline.py ENDPOINT_URL ADMIN_URL COUNTER_DIR SCENARIO [PROFILE]

It builds the app below, serves it in-process with ``serve_app`` (hypercorn, HTTP/2) at
``ENDPOINT_URL/v/<code version>``, registers that URI with Restate's admin API, writes the
marker ``COUNTER_DIR/at-serving`` and serves until it is killed. It starts no run: the test
process does (a client-only ``RestateRuntime``).

The app's one agent is ``fork`` of tests/crash/_branches.py (two branches of three steps each,
with the delays of PROFILE, one of ``DELAYS``: ``mixed``, the local test's, by default; their
counters outside Restate's journal; SCENARIO ``last`` or ``none``: see there). It runs inside the
run's one Workflow invocation; each step is one ``ctx.run`` in the workflow's journal, named
``work@fork:entry/<branch>:<n>`` (branch ``0`` is A, ``1`` is B).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from roost import App

# The agent shared with the other branch pipelines (imported as tests.crash.*, or run as a script).
if __package__:
    from . import _branches as branches
    from ._steps import append
else:
    import _branches as branches
    from _steps import append

APP_NAME = "crashbranches"
RUN_INPUT = branches.RUN_INPUT
DELAYS = branches.DELAYS


def build_app(runtime: Any = None) -> App:
    """The app; ``runtime``: the client-only RestateRuntime of the test process (None here).
    App() records this file as the app's source: every process building it here serves the same
    code version, at the same deployment URI."""
    return App([branches.fork_agent()], name=APP_NAME, runtime=runtime)


async def serve(endpoint: str, admin: str) -> None:
    from roost.runtime.restate._endpoint import serve_app

    app = build_app()
    _, uri = await serve_app(app.compiled, endpoint=endpoint, admin=admin, app_ref=app.app_ref)
    append(branches.COUNTER_DIR / "at-serving", f"{os.getpid()} {time.time()!r} {uri}\n")
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6) or sys.argv[4] not in branches.SCENARIOS or sys.argv[5:] and sys.argv[5] not in DELAYS:
        sys.exit(f"usage: branches_restate_pipeline.py ENDPOINT_URL ADMIN_URL COUNTER_DIR "
                 f"{{{'|'.join(sorted(branches.SCENARIOS))}}} [{'|'.join(DELAYS)}]")
    endpoint_url, admin_url, counters, scenario = sys.argv[1:5]
    branches.configure(counters, scenario, *sys.argv[5:])
    asyncio.run(serve(endpoint_url, admin_url))
