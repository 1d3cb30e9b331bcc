"""``roost ui`` in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven
by Selenium; ``make test`` installs them): the runs list shows runs and filters them by status,
the run page draws the app's graph and a failed run's traceback, and approving from the page
resumes the run to its end.

The server runs in a thread of this process on a free 127.0.0.1 port, on the embedded journal.
Each page is saved as a screenshot in the test's tmp_path; with ``ROOST_UI_SCREENSHOTS=DIR``
(``docs/img`` for the docs) into DIR too. Every wait is bounded and stops by itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from roost.runtime.local import LocalRuntime  # noqa: E402
from roost.ui import RunSource  # noqa: E402
from tests.cli_support import clean_env, spawn, stop, wait_for, write_app  # noqa: E402
from tests.ui_support import free_port, leave_waiting, run_to_end, ui_server  # noqa: E402

WAIT = 30.0
"""Seconds the browser gets for what a page shows (a bound for a loaded machine, not a speed check)."""

FAILING = '''
from pydantic import BaseModel
from roost import App, agent


class Topic(BaseModel):
    title: str


def check_title(title: str) -> None:
    raise ValueError(f"no facts about {title}")


def research(t: Topic) -> Topic:
    check_title(t.title)
    return t


researcher = agent("researcher").contracts(input=Topic, output=Topic).engine(research).retry(max_attempts=1)
app = App([researcher], name="failing")
'''


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    raise AssertionError(f"{' or '.join(names)} is not installed: 'make test' installs Debian's chromium and "
                         "chromium-driver (apt-get install -y chromium chromium-driver)")


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = _binary("chromium", "chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(_binary("chromedriver")), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver: WebDriver, tmp_path: Path, name: str) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(700, min(int(height) + 40, 2400)))
    assert driver.save_screenshot(str(tmp_path / name))
    extra = os.environ.get("ROOST_UI_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / name, Path(extra) / name)


def _wait(driver: WebDriver, what: str, condition: object) -> object:
    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition, message=f"the page did not show {what}")


def _js(driver: WebDriver, script: str) -> Any:
    """Read the page in one script: the pages redraw every second, so elements found one call
    earlier may be gone (stale) by the next."""
    return driver.execute_script(script)


def _rows(driver: WebDriver) -> dict[str, str]:
    return dict(_js(driver, "return [...document.querySelectorAll('#runs tbody tr')]"
                            ".map(r => [r.dataset.runId, r.dataset.status])"))


def _nodes(driver: WebDriver) -> dict[str, str]:
    return dict(_js(driver, "return [...document.querySelectorAll('#graph svg g.node')]"
                            ".map(g => [g.dataset.agent, g.dataset.status])"))


def _texts(driver: WebDriver, selector: str) -> list[str]:
    return list(_js(driver, f"return [...document.querySelectorAll({selector!r})].map(e => e.textContent)"))


def test_runs_list_and_run_page(tmp_path: Path, browser: WebDriver) -> None:
    journal = tmp_path / "roost.db"
    app_file = write_app(tmp_path, approval=True)
    asyncio.run(run_to_end(write_app(tmp_path, file="plain.py", name="plain"), journal, "r-done", "owls"))
    asyncio.run(leave_waiting(app_file, journal, "r-waiting", "bats"))
    failing = tmp_path / "failing.py"
    failing.write_text(FAILING)
    asyncio.run(_run_failing(failing, journal))

    with ui_server(RunSource("local", journal)) as base:
        browser.get(base + "/")
        _wait(browser, "the three runs", lambda d: {"r-done", "r-waiting", "r-failed"} <= _rows(d).keys())
        assert _rows(browser)["r-waiting"] == "waiting" and _rows(browser)["r-done"] == "completed"
        _screenshot(browser, tmp_path, "ui-runs.png")

        Select(browser.find_element(By.ID, "status")).select_by_visible_text("waiting")
        _wait(browser, "only the waiting run", lambda d: set(_rows(d)) == {"r-waiting"})
        assert "status=waiting" in browser.current_url

        browser.get(base + "/runs/r-waiting")
        _wait(browser, "the graph's three agents", lambda d: set(_nodes(d)) == {"writer", "editor", "publisher"})
        assert _nodes(browser) == {"writer": "completed", "editor": "waiting", "publisher": "idle"}
        edges = _js(browser, "return [...document.querySelectorAll('#graph svg path.edge')]"
                             ".map(e => e.dataset.source + '>' + e.dataset.target)")
        assert set(edges) == {"writer>editor", "editor>publisher"}
        assert browser.find_element(By.ID, "status").text == "waiting"
        assert '"title": "bats"' in browser.find_element(By.ID, "input").text
        assert browser.find_elements(By.CSS_SELECTOR, "#approval-list li[data-name=editor] button.approve")
        timeline = _js(browser, "return [...document.querySelectorAll('#timeline .tl-activation')].map(r => r.dataset.agent)")
        assert timeline[:2] == ["writer", "editor"]
        _screenshot(browser, tmp_path, "ui-run-waiting.png")

        browser.get(base + "/runs/r-failed")
        _wait(browser, "the failed run's traceback", lambda d: "check_title" in d.find_element(By.ID, "traceback").text)
        assert "no facts about moles" in browser.find_element(By.ID, "error-message").text
        assert _nodes(browser) == {"researcher": "failed"}
        _screenshot(browser, tmp_path, "ui-run-failed.png")


async def _run_failing(app_file: Path, journal: Path) -> None:
    from roost._loader import load_app

    app = load_app(str(app_file))
    app.journal = journal
    try:
        result = await app.arun({"title": "moles"}, "r-failed", timeout=30)
        assert result.status == "failed"
    except Exception as exc:  # noqa: BLE001 - arun may raise the run's failure: it is recorded either way
        assert "no facts about moles" in str(exc)
    finally:
        await app.aclose()


def test_approving_from_the_page_resumes_the_run(tmp_path: Path, browser: WebDriver) -> None:
    journal = tmp_path / "roost.db"
    app_file = write_app(tmp_path, approval=True)
    asyncio.run(leave_waiting(app_file, journal, "r-approve"))

    with ui_server(RunSource("local", journal)) as base:
        browser.get(base + "/runs/r-approve")
        approve = _wait(browser, "the Approve button", lambda d: d.find_element(
            By.CSS_SELECTOR, "#approval-list li[data-name=editor] button.approve"))
        approve.click()  # type: ignore[attr-defined]
        _wait(browser, "the run completed", lambda d: d.find_element(By.TAG_NAME, "body").get_attribute(
            "data-status") == "completed")
        _wait(browser, "every agent completed", lambda d: _nodes(d) == dict.fromkeys(
            ("writer", "editor", "publisher"), "completed"))
        assert browser.find_element(By.ID, "approvals").get_attribute("hidden") is not None
        assert any('"words": 2' in t for t in _texts(browser, "#outputs .output[data-agent=publisher]"))
        _screenshot(browser, tmp_path, "ui-run-completed.png")

    async def record() -> object:
        async with (rt := LocalRuntime(journal, resume=False)):
            return await rt.get("r-approve")

    done = asyncio.run(record())
    assert done.status == "completed"  # type: ignore[attr-defined]
    outputs = {a.agent: a.output for a in done.activations}  # type: ignore[attr-defined]
    assert outputs["publisher"] == {"text": "ABOUT OWLS", "words": 2}


FREEZE_POLLS = """
const done = arguments[arguments.length - 1];
const real = window.fetch.bind(window);
real("/api/runs/" + encodeURIComponent(arguments[0])).then((r) => r.text()).then((frozen) => {
  window.roostPolls = 0;
  window.fetch = (url, options) => {
    if (options && options.method) return real(url, options);  // answers go to the server
    window.roostPolls += 1;
    return Promise.resolve(new Response(frozen, { status: 200, headers: { "Content-Type": "application/json" } }));
  };
  done(true);
});
"""
"""Keep the page's polls answering the run as it is now (a page that has not caught up yet)."""


def test_rejecting_from_the_page_and_a_refused_answer(tmp_path: Path, browser: WebDriver) -> None:
    journal = tmp_path / "roost.db"
    app_file = write_app(tmp_path, approval=True)
    asyncio.run(leave_waiting(app_file, journal, "r-reject"))
    asyncio.run(leave_waiting(app_file, journal, "r-stale", "bats"))

    with ui_server(RunSource("local", journal)) as base:
        browser.get(base + "/runs/r-reject")
        reject = _wait(browser, "the Reject button", lambda d: d.find_element(
            By.CSS_SELECTOR, "#approval-list li[data-name=editor] button.reject"))
        reject.click()  # type: ignore[attr-defined]
        _wait(browser, "the run completed", lambda d: d.find_element(By.TAG_NAME, "body").get_attribute(
            "data-status") == "completed")
        _wait(browser, "the editor rejected", lambda d: _nodes(d) == {
            "writer": "completed", "editor": "rejected", "publisher": "idle"})

        browser.get(base + "/runs/r-stale")
        approve = _wait(browser, "the Approve button", lambda d: d.find_element(
            By.CSS_SELECTOR, "#approval-list li[data-name=editor] button.approve"))
        assert browser.execute_async_script(FREEZE_POLLS, "r-stale") is True
        asyncio.run(_cancel(app_file, journal, "r-stale"))  # meanwhile, elsewhere
        approve.click()  # type: ignore[attr-defined]
        refused = "editor: run 'r-stale' is cancelled: nothing waits for 'editor'"
        _wait(browser, "why the answer was refused", lambda d: _texts(d, "#refused") == [refused])
        polls = int(_js(browser, "return window.roostPolls"))
        _wait(browser, "two more polls", lambda d: int(_js(d, "return window.roostPolls")) >= polls + 2)
        assert _texts(browser, "#refused") == [refused]  # the page's polling does not wipe it out
        assert browser.find_element(By.ID, "refused").get_attribute("hidden") is None


async def _cancel(app_file: Path, journal: Path, run_id: str) -> None:
    from roost._loader import load_app

    app = load_app(str(app_file))
    app.journal = journal
    try:
        await app.acancel(run_id)
    finally:
        await app.aclose()


def _until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT} s")
        time.sleep(0.1)


def test_roost_ui_command(tmp_path: Path) -> None:
    """``roost ui`` as a user starts it: it says where it listens, answers the API on 127.0.0.1,
    resumes a run whose approval it resolves, refuses other Host headers, says when its port is
    taken, and stops on SIGTERM."""
    journal = tmp_path / "roost.db"
    app_file = write_app(tmp_path, approval=True)
    asyncio.run(leave_waiting(app_file, journal, "r-cli"))
    port = free_port()
    out = tmp_path / "ui.out"
    proc = spawn(clean_env(), out, tmp_path, "ui", "--port", str(port), "--journal", journal)
    try:
        wait_for(out, f"http://127.0.0.1:{port}", proc)
        base = f"http://127.0.0.1:{port}"
        _until("the server answers", lambda: _answers(base))
        listed = httpx.get(f"{base}/api/runs", params={"status": "waiting"}, timeout=10).json()
        assert [r["run_id"] for r in listed["runs"]] == ["r-cli"]
        assert httpx.get(f"{base}/api/runs", headers={"Host": "evil.example"}, timeout=10).status_code == 400
        page = httpx.get(f"{base}/runs/r-cli", timeout=10)
        assert page.status_code == 200 and "roost-ui.js" in page.text
        assert httpx.get(f"{base}/static/roost-ui.js", timeout=10).status_code == 200
        answered = httpx.post(f"{base}/api/runs/r-cli/resolve", json={"name": "editor", "value": True}, timeout=30)
        assert answered.status_code == 200, answered.text
        _until("the run completes", lambda: httpx.get(f"{base}/api/runs/r-cli", timeout=10).json()["status"] == "completed")
        busy = spawn(clean_env(), tmp_path / "busy.out", tmp_path, "ui", "--port", str(port), "--journal", journal)
        try:
            busy.wait(WAIT)
        finally:
            stop(busy)
        assert busy.returncode == 1
        said = (tmp_path / "busy.out").read_text()
        assert f"port {port} (--port) of 127.0.0.1 is in use" in said and "Traceback" not in said
    finally:
        code = stop(proc)
    assert code == 0, out.read_text()


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/api/runs", timeout=5).status_code == 200
    except httpx.TransportError:
        return False
