"""The app of cancel_kill_app.py served on Restate or Temporal, in a process test_cancel_kill.py kills.

    python cancel_kill_served.py restate COUNTER_DIR ENDPOINT_URL ADMIN_URL
    python cancel_kill_served.py temporal COUNTER_DIR ADDRESS TASK_QUEUE

It serves the app (Restate: at ENDPOINT_URL, registered with the admin API; Temporal: a worker
polling TASK_QUEUE), writes the marker ``COUNTER_DIR/at-serving`` and serves until it is killed.
It starts no run: the test process does, with a client-only runtime.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from cancel_kill_app import build, marker  # the script's directory is on sys.path


async def serve(backend: str, counter_dir: Path, first: str, second: str) -> None:
    if backend == "restate":
        from roost.runtime.restate._endpoint import serve_app

        app = build(None, counter_dir)
        await serve_app(app.compiled, endpoint=first, admin=second, app_ref=app.app_ref)
    else:
        from roost.runtime.temporal import TemporalRuntime

        app = build(None, counter_dir, TemporalRuntime(address=first, task_queue=second, serve=True))
        await app.runtime()  # connects and starts the worker
    marker(counter_dir, "serving")
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]))
