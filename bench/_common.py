"""Helpers shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


async def bounded(n: int, concurrency: int, make: Callable[[int], Awaitable[Any]]) -> None:
    """Run make(0..n-1) with at most ``concurrency`` in flight."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await make(i)

    await asyncio.gather(*(one(i) for i in range(n)))


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until_ok(what: str, attempt: Callable[[int], Awaitable[Any]], timeout: float = 30.0,
                   pause: float = 0.2) -> None:
    """Call ``attempt(0)``, ``attempt(1)``... until one succeeds: the first run on a new server may
    fail while it learns the services (Restate's ingress answers 404 for a moment, Temporal's
    namespace may not be ready). Gives up after ``timeout`` seconds, naming ``what``."""
    deadline = time.monotonic() + timeout
    for k in range(10_000):
        try:
            await asyncio.wait_for(attempt(k), timeout)
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: the first run still fails after {timeout} s") from exc
            await asyncio.sleep(pause)
    raise RuntimeError(f"{what}: no attempt succeeded")


# -- the command line


def arg_parser(doc: str | None, measurements: Iterable[str]) -> argparse.ArgumentParser:
    """The parser with the options every script has first: --only and --quick."""
    names = list(measurements)
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(names), help="comma-separated: " + ", ".join(names))
    p.add_argument("--quick", action="store_true", help="smaller counts (smoke test; figures are noisier)")
    return p


def add_out(p: argparse.ArgumentParser, results: Path) -> None:
    """The --out option (every script's last), defaulting to ``results`` under bench/results/."""
    p.add_argument("--out", default=str(results), help=f"JSON results file (default bench/results/{results.name})")


def chosen(p: argparse.ArgumentParser, only: str, measurements: Iterable[str]) -> list[str]:
    """The measurements --only names, in its order; an unknown name is a usage error."""
    names = [s.strip() for s in only.split(",") if s.strip()]
    unknown = set(names) - set(measurements)
    if unknown:
        p.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    return names


@contextlib.contextmanager
def timed(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Records how long the measurement ``name`` took (s) and says so on stderr."""
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 1)
    print(f"[{name}: {timings[name]} s]", file=sys.stderr, flush=True)


async def run_measurements(bench: Any, names: list[str],
                           measurements: Mapping[str, Callable[[Any], Awaitable[None]]]) -> dict[str, float]:
    """``bench.open()``, the measurements ``names`` in turn, ``bench.close()`` in any case; their durations."""
    timings: dict[str, float] = {}
    try:
        await bench.open()
        for name in names:
            with timed(name, timings):
                await measurements[name](bench)
    finally:
        await bench.close()
    return timings


def write_json(out: Path, payload: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {out}")


# -- what the results were measured on


def source_state() -> str:
    """The git commit of the roost sources this run imported ("(src modified)" if they differ from it)."""
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        commit += " (src modified)" if dirty else ""
    return commit


def host_info(**more: Any) -> dict[str, Any]:
    """CPUs, CPU model, memory and Python; then ``more``; then the platform and the event loop."""
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as f:
        mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "python": platform.python_version(), **more,
            "platform": platform.platform(), "event_loop": "asyncio (default selector loop)"}


def package_versions(*names: str) -> dict[str, str]:
    """The installed versions of the packages ``names`` (those installed)."""
    versions = {}
    for pkg in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return versions
