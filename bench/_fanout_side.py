"""``each=True`` fan-out + gather on a production runtime next to the embedded runtime, for
bench_restate.py and bench_temporal.py: the same agents (bench_fanout.py's), the same process."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_fanout as bf  # bench/ is on sys.path when run as a script
from _report import Row

from roost import App, agent
from roost.agent import Agent

RATIO = 10.0  # 1,000 items within 10x of the embedded runtime
SCALING = 12.0  # 10x the items costs at most 12x the time


def agents() -> list[Agent]:
    s = agent("split").contracts(input=bf.Job, output=list[bf.Item]).engine(bf.split)
    w = agent("worker").contracts(input=bf.Item, output=bf.Done).engine(bf.work).reacts_to(s, each=True)
    j = agent("join").contracts(input=list[bf.Done], output=bf.Summary).engine(bf.join).reacts_to(w)
    return [s, w, j]


async def measure(backend: str, app: App, tmp: Path, sizes: tuple[int, int],
                  row: Callable[..., Row]) -> tuple[list[Row], dict[str, Any]]:
    """Run ``app`` (on ``backend``) and the same agents on the embedded runtime over ``sizes``;
    the rows (built with ``row``, the bench's Row class) and the raw seconds."""
    embedded = App(agents(), name="fanout", journal=tmp / "fanout.db", max_activations=4 * max(sizes) + 100)
    await embedded.runtime("local")
    times: dict[str, dict[int, float]] = {backend: {}, "local": {}}
    try:
        for n in sizes:
            for side, runner in (("local", embedded), (backend, app)):
                t0 = time.perf_counter()
                res = await runner.arun(bf.Job(n=n), run_id=f"fanout-{side}-{n}", timeout=900)
                times[side][n] = time.perf_counter() - t0
                bf.check(f"roost on {side}", n, res["join"])
    finally:
        await embedded.aclose()
    small, large = sizes
    note = "comparison column: the same app on roost's embedded runtime (SQLite), same process"
    scaling = times[backend][large] / times[backend][small]
    rows = [
        row("fanout_small", f"each=True fan-out + gather, {small:,} items (vs the embedded runtime)", "ms",
            times[backend][small] * 1e3, times["local"][small] * 1e3, RATIO if small == 1_000 else None, note=note),
        row("fanout_large", f"each=True fan-out + gather, {large:,} items (vs the embedded runtime)", "ms",
            times[backend][large] * 1e3, times["local"][large] * 1e3, note=note),
        row("fanout_scaling", f"{backend}: time({large:,}) / time({small:,})", "x", scaling, None,
            note=f"target ≤ {SCALING:g}: {'pass' if scaling <= SCALING else 'MISS'}", extra={"seconds": times}),
    ]
    return rows, times
