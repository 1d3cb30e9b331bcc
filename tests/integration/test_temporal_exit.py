"""Scripts that use the Temporal runtime exit cleanly: status 0, no "Fatal Python error", no hang.

Left to interpreter finalization, the SDK's Rust threads could take the GIL there and kill a
finished script (``PyGILState_Release`` or a segfault: one exit in 6 to 20 measured here, more
under load), and a script that never closed its App could hang in ``asyncio.run``'s teardown.
Each way of using the runtime runs as a fresh subprocess RUNS times, two at a time (the load makes
the crash likelier). At one crash in six, 20 clean runs of one way happen by chance with
probability 0.026; at one in twenty, 60 clean runs of the three ways with probability 0.046.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cli_support import clean_env

pytest.importorskip("temporalio")

from roost.runtime.temporal import TemporalDevServer  # noqa: E402

pytestmark = pytest.mark.temporal

RUNS = 20
AT_ONCE = 2
EXIT_WITHIN = 60.0
"""Seconds one script gets (it takes about one): past this it counts as hung."""

APP = '''
import asyncio
import os
import sys

from pydantic import BaseModel
from roost import App, agent
from roost.runtime.temporal import TemporalRuntime


class Topic(BaseModel):
    title: str


class Draft(BaseModel):
    text: str


def write(t: Topic) -> Draft:
    return Draft(text=f"about {t.title}")


def edit(d: Draft) -> Draft:
    return Draft(text=d.text.upper())


writer = agent("writer").contracts(input=Topic, output=Draft).engine(write)
editor = agent("editor").contracts(input=Draft, output=Draft).engine(edit).reacts_to(writer)
'''

SCRIPTS = {
    # App.run opens the runtime for the call and closes it (ROOST_RUNTIME=temporal picks Temporal)
    "run": APP + '''
app = App([writer, editor], name="exit_run")
result = app.run({"title": "owls"}, mode="prod")
print(result.status, result.outputs["editor"].text)
''',
    # a runtime given to the App, asyncio.run, then aclose() or not
    "arun-aclose": APP + '''
app = App([writer, editor], name="exit_arun", runtime=TemporalRuntime(address=os.environ["ROOST_TEMPORAL_ADDRESS"]))


async def main() -> None:
    result = await app.arun({"title": "owls"})
    print(result.status, result.outputs["editor"].text)
    await app.aclose()


asyncio.run(main())
''',
    "arun-no-aclose": APP + '''
app = App([writer, editor], name="exit_arun", runtime=TemporalRuntime(address=os.environ["ROOST_TEMPORAL_ADDRESS"]))


async def main() -> None:
    result = await app.arun({"title": "owls"})
    print(result.status, result.outputs["editor"].text)


asyncio.run(main())
''',
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    with TemporalDevServer(tmp_path_factory.mktemp("temporal-exit")) as started:
        yield started


def _run(script: Path, env: dict[str, str]) -> tuple[int | None, str, str]:
    """Run ``script`` to its end: its exit status (None if it hung), stdout and stderr."""
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=script.parent)
    try:
        out, err = proc.communicate(timeout=EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()  # by its pid: this test started it
        out, err = proc.communicate(timeout=10)
        return None, out.decode(errors="replace"), err.decode(errors="replace")
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@pytest.mark.timeout(RUNS * EXIT_WITHIN / AT_ONCE + 60)
@pytest.mark.parametrize("way", list(SCRIPTS))
def test_script_exits_cleanly(way: str, server: TemporalDevServer, tmp_path: Path) -> None:
    script = tmp_path / f"{way.replace('-', '_')}.py"
    script.write_text(SCRIPTS[way])
    env = clean_env(ROOST_RUNTIME="temporal", ROOST_TEMPORAL_ADDRESS=server.address,
                    ROOST_JOURNAL=str(tmp_path / "unused.db"))
    with ThreadPoolExecutor(AT_ONCE) as pool:
        outcomes = list(pool.map(lambda _: _run(script, env), range(RUNS)))
    bad = [(code, out, err) for code, out, err in outcomes
           if code != 0 or "Fatal Python error" in err
           or out.partition("\n")[0] != "completed ABOUT OWLS"]  # the SDK's core logs to stdout
    summary = ", ".join("hung" if code is None else str(code) for code, _, _ in bad)
    detail = "\n\n".join(f"exit status {code}\nstdout:\n{out}\nstderr:\n{err[-3000:]}" for code, out, err in bad[:2])
    assert not bad, f"{len(bad)} of {RUNS} runs did not exit cleanly ({summary}); the first:\n{detail}"
