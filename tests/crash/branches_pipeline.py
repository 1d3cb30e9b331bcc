"""An agent whose orchestration code runs two branches concurrently: runnable as a script.

    python tests/crash/branches_pipeline.py JOURNAL RUN_ID COUNTER_DIR SCENARIO

The agent ``fork`` of tests/crash/_branches.py (two branches of three steps each, with the
delays of its profile ``mixed``, their counters outside the journal, and its SCENARIO ``last`` or
``none``; see there) on the embedded runtime's journal JOURNAL: the process runs the run RUN_ID.

On completion the last stdout line is JSON: {"status", "outputs"}.
"""

from __future__ import annotations

import json
import sys

import _branches as branches  # the script's directory is on sys.path

from roost import App


def main() -> None:
    journal, run_id, counters, scenario = sys.argv[1:5]
    branches.configure(counters, scenario)
    app = App([branches.fork_agent()], name="branches", journal=journal)
    result = app.run(branches.Go(label="x"), run_id=run_id, timeout=60)
    print(json.dumps({"status": result.status, "outputs": {"fork": result["fork"].model_dump()}}))


if __name__ == "__main__":
    main()
