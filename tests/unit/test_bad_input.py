"""Bad input gets a clear typed error at once: run ids, durations, retry policies, approval
values, promise names; and credentials in URLs never show (errors, journal, logs, reprs)."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from roost import App, RetryPolicy, agent
from roost._config import RestateSettings, Settings
from roost._engine import approval_decision, is_approved
from roost._redact import redact_text, redact_url
from roost.errors import PromiseError, RetryableError, RunFailedError, RunNotFoundError, UsageError
from roost.runtime.local import LocalRuntime
from tests.cli_support import invoke, write_app


class Q(BaseModel):
    q: str


def simple_app(path: Path) -> App:
    return App([agent("a").contracts(input=Q, output=Q).engine(lambda q: q)], journal=path, name="simple")


def approval_app(path: Path) -> App:
    w = agent("writer").contracts(input=Q, output=Q).engine(lambda q: q)
    e = agent("editor").contracts(input=Q, output=Q).engine(lambda q: q).reacts_to(w).needs_approval()
    return App([w, e], journal=path, name="approvals")


async def _runs_in(path: Path) -> list[str]:
    async with (rt := LocalRuntime(path, resume=False)):
        return [r.run_id for r in await rt.list_runs()]


# -- run ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "   ", "\t\n", " r1", "r1 ", 5, b"r1"])
async def test_a_bad_run_id_is_refused_before_anything_starts(tmp_path: Path, bad: Any) -> None:
    app = simple_app(tmp_path / "j.db")
    async with app:
        for call in (app.arun(Q(q="x"), bad), app.start(Q(q="x"), bad)):
            with pytest.raises(UsageError, match="run_id must"):
                await call
        with pytest.raises(UsageError, match="run_id must"):
            app.submission(Q(q="x"), bad)
        for lookup in (app.aget(bad), app.aresume(bad), app.aresolve(bad, "a", True)):
            with pytest.raises(UsageError, match="run_id must"):
                await lookup
        assert await _runs_in(tmp_path / "j.db") == [], "no run was started under a random id"
        none = await app.arun(Q(q="x"), None)  # None still means: a new id
        assert none.run_id.startswith("run-") and none.status == "completed"


def test_the_blocking_calls_refuse_a_blank_run_id_too(tmp_path: Path) -> None:
    app = simple_app(tmp_path / "j.db")
    with pytest.raises(UsageError, match="must not be empty or blank.*pass None for a new id"):
        app.run(Q(q="x"), "")
    with pytest.raises(UsageError, match="must not be empty or blank"):
        app.resolve(" ", "a", True)
    assert not (tmp_path / "j.db").exists() or asyncio.run(_runs_in(tmp_path / "j.db")) == []


def test_the_cli_refuses_a_blank_run_id(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    simple_app(journal).run(Q(q="x"), "r1")
    for args in (("runs", "show", ""), ("runs", "show", "  "), ("runs", "resume", ""),
                 ("resolve", "", "editor", "true"), ("run", write_app(tmp_path), "-i", "{}", "--run-id", " ")):
        res = invoke(*args, "--journal", journal)
        assert res.exit_code == 2, (args, res.output)
        assert "the run id must not be empty or blank" in res.stderr
    assert asyncio.run(_runs_in(journal)) == ["r1"]


# -- durations ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, "3", True])
async def test_wait_limits_must_be_finite(tmp_path: Path, bad: Any) -> None:
    app = simple_app(tmp_path / "j.db")
    async with app:
        with pytest.raises(UsageError, match="app.arun timeout must be"):
            await app.arun(Q(q="x"), "r1", timeout=bad)
        assert await _runs_in(tmp_path / "j.db") == [], "refused before the run started"
        handle = await app.start(Q(q="x"), "r2")
        with pytest.raises(UsageError, match="run 'r2': handle.result timeout must be"):
            await handle.result(timeout=bad)
        with pytest.raises(UsageError, match="run 'r2': handle.approval timeout must be"):
            await handle.approval(timeout=bad)
        assert (await handle.result(timeout=10)).status == "completed"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.5])
def test_retry_after_must_be_finite(bad: float) -> None:
    with pytest.raises(UsageError, match="retry_after must be a finite number"):
        RetryableError("later", retry_after=bad)
    assert RetryableError("later", retry_after=0).retry_after == 0


# -- retry policies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("max_attempts", 2.5), ("max_attempts", True), ("max_attempts", "3"), ("max_attempts", 0), ("max_attempts", None),
    ("initial_interval", math.nan), ("initial_interval", math.inf), ("initial_interval", -1),
    ("initial_interval", "0.2"), ("initial_interval", timedelta(seconds=1)),
    ("max_interval", math.inf), ("max_interval", math.nan), ("max_interval", False),
    ("backoff", math.nan), ("backoff", math.inf), ("backoff", 0.5),
    ("non_retryable", ("KeyError",)), ("non_retryable", (int,)), ("non_retryable", KeyError("x")),
])
def test_retry_policy_fields_are_checked_when_built(field: str, value: Any) -> None:
    with pytest.raises(UsageError, match=f"RetryPolicy.{field} must") as info:
        RetryPolicy(**{field: value})
    assert repr(value) in str(info.value), "the error names the value"
    with pytest.raises(UsageError, match=f"RetryPolicy.{field}"):  # the same through an agent
        agent("a").retry(**{field: value})


def test_good_retry_policies_still_build() -> None:
    p = RetryPolicy(max_attempts=1, initial_interval=0, backoff=1, max_interval=0)
    assert p.delay(3) == 0
    assert RetryPolicy(non_retryable=KeyError).non_retryable == (KeyError,)
    assert RetryPolicy(non_retryable=[KeyError, ValueError]).non_retryable == (KeyError, ValueError)
    assert hash(RetryPolicy(non_retryable=[KeyError])) == hash(RetryPolicy(non_retryable=(KeyError,)))


# -- approvals and promise names ----------------------------------------------------------------------


@pytest.mark.parametrize(("value", "decision"), [
    (True, True), (False, False), ({"approved": True, "reason": "ok"}, True), ({"approved": False}, False),
    ("yes", True), (" No ", False), ("APPROVED", True), ("reject", False),
    ([False], None), ([0], None), (0, None), (1, None), (None, None), ("maybe", None), ({"approved": "yes"}, None),
    ({}, None), ("", None),
])
def test_an_approval_is_a_yes_or_a_no(value: Any, decision: bool | None) -> None:
    assert approval_decision(value) is decision
    assert is_approved(value) is (decision is True), "anything but a yes counts as a rejection"


async def test_approval_values_that_are_not_a_yes_or_no_are_refused(tmp_path: Path) -> None:
    app = approval_app(tmp_path / "j.db")
    async with app:
        handle = await app.start(Q(q="x"), "r1")
        assert await handle.approval(timeout=10) == "editor"
        for bad in ([False], [0], 0, 1, "maybe", None):
            with pytest.raises(PromiseError, match=r"run 'r1': 'editor' is an approval: answer it with true or false"):
                await app.aresolve("r1", "editor", bad)
        assert (await handle.record()).waiting_on == ["editor"], "a refused value decides nothing"
        await app.aresolve("r1", "editor", "no")
        result = await handle.result(timeout=10)
    assert result.agent_status["editor"] == "rejected"


async def test_an_unknown_promise_name_is_refused_listing_what_the_run_waits_on(tmp_path: Path) -> None:
    app = approval_app(tmp_path / "j.db")
    async with app:
        handle = await app.start(Q(q="x"), "r1")
        assert await handle.approval(timeout=10) == "editor"
        with pytest.raises(PromiseError, match=r"no promise named 'editr' is awaited.*the run waits on 'editor'"):
            await app.aresolve("r1", "editr", True)
        await app.aresolve("r1", "editor", True)
        await handle.result(timeout=10)
        with pytest.raises(PromiseError, match="is completed: nothing waits for 'editr'"):
            await app.aresolve("r1", "editr", True)
        with pytest.raises(RunNotFoundError):
            await app.aresolve("r-none", "editor", True)


def test_the_cli_refuses_a_non_bool_approval_and_an_unknown_name(tmp_path: Path) -> None:
    app_file, journal = write_app(tmp_path, approval=True), tmp_path / "j.db"

    async def leave_waiting() -> None:
        from roost._loader import load_app

        app = load_app(str(app_file))
        app.journal = journal
        async with app:
            handle = await app.start({"title": "owls"}, "r-w")
            assert await handle.approval(timeout=10) == "editor"

    asyncio.run(leave_waiting())
    res = invoke("resolve", "r-w", "editor", "[false]", "--journal", journal)
    assert res.exit_code == 1 and "'editor' is an approval: answer it with true or false" in res.stderr
    res = invoke("resolve", "r-w", "editr", "true", "--journal", journal)
    assert res.exit_code == 1 and "no promise named 'editr'" in res.stderr and "waits on 'editor'" in res.stderr
    app_file.unlink()  # without the app file only the approval's value can be checked: from the journal
    res = invoke("resolve", "r-w", "editor", "0", "--journal", journal)
    assert res.exit_code == 1 and "'editor' is an approval" in res.stderr


# -- credentials in URLs -------------------------------------------------------------------------------


def test_redact_url_hides_user_info_and_secret_query_values() -> None:
    assert redact_url("https://bob:pw123@host:8443/v1?api_key=k1&x=1") == "https://***@host:8443/v1?api_key=***&x=1"
    assert redact_url("http://tok-only@h/v1") == "http://***@h/v1"
    assert redact_url("http://h/v1?access_token=a;sig=b&page=2") == "http://h/v1?access_token=***;sig=***&page=2"
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert redact_text("at (http://bob:pw123@h/v1), again pw123", ["pw123"]) == "at (http://***@h/v1), again ***"


def test_settings_reprs_hide_url_credentials() -> None:
    r = RestateSettings(ingress="http://u:ingress-pw@h:8080", admin="http://h:9070?token=admin-tok")
    assert "ingress-pw" not in repr(r) and "admin-tok" not in repr(r) and "***@h:8080" in repr(r)
    s = Settings(restate=r, raw={"restate": {"ingress": "http://u:ingress-pw@h:8080"}})
    assert "ingress-pw" not in repr(s) and "admin-tok" not in repr(s)


def test_model_base_url_credentials_reach_no_error_journal_log_or_repr(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from roost.testing import FakeModelServer

    class Out(BaseModel):
        text: str

    with FakeModelServer() as server:
        # The query string makes the fake server answer 404 "no route <path>": the provider's
        # message then quotes the URL, as real proxies do.
        url = server.base_url.replace("http://", "http://bob:url-pass-4711@") + "?api_key=qs-key-0815"
        a = agent("a").contracts(input=Q, output=Out).model("openai/m", base_url=url, api_key="sk-arg-key-42")
        a.retry(max_attempts=1)
        app = App([a], journal=tmp_path / "j.db", name="llm")
        caplog.set_level(logging.DEBUG, logger="roost")
        with pytest.raises(RunFailedError) as info:
            app.run(Q(q="x"), "r-url", timeout=30)
    secrets = ("url-pass-4711", "qs-key-0815", "sk-arg-key-42")
    texts = {
        "error": str(info.value),
        "logs": caplog.text,
        "repr": repr(app.compiled.specs["a"].engine.settings),  # type: ignore[attr-defined]
    }
    with sqlite3.connect(tmp_path / "j.db") as db:
        texts["journal"] = "\n".join(str(row) for table in ("runs", "messages", "journal")
                                     for row in db.execute(f"SELECT * FROM {table}"))  # noqa: S608
    db.close()
    assert "***" in texts["error"] and "qs-key" not in texts["error"], texts["error"]
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} shows in the {where}: {text}"
