"""The operator dashboard in a real browser: Debian's Chromium, driven by Playwright.

Two ``mcp-tasks serve --http`` processes (A and B) share one journal, a
SQLite file or a PostgreSQL database. The browser signs in to A's dashboard
with the operator token; alice submits over MCP to B; the page shows the task
appear, its progress change as the test lets the tool advance, and cancels
it with its button; B then says over MCP that the task is cancelled, and its
history that the dashboard's operator did it. Playwright's own waiting
(``expect``) bounds every wait: nothing sleeps.

The browser is the system's Chromium (``apt-get install chromium``;
``scripts/system-deps`` installs it); Playwright never downloads one. Without
it these tests fail saying what to install.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import AsyncGenerator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from mcp_tasks.client import TaskClient

from ..pg_server import fresh_database
from .conftest import ServerFilesFactory
from .support import TIMEOUT, Gates, HttpServer, running, start_task

pytestmark = pytest.mark.timeout(120)

ALICE = "alice-dashboard-token-0123456789"
OPERATOR = "operator-dashboard-token-0123456"
MALLORY = "mallory-dashboard-token-01234567"
#: A client whose name (and question) is markup: the page must show it as text.
MALLORY_ID = '<b class="injected">mallory</b>'
HOSTILE_QUESTION = 'Ship <img class="injected" src="/x">it?'
ASK_TOOL = Path(__file__).resolve().parents[2] / "tools" / "ask.py"
ELICIT: dict[str, Any] = {"elicitation": {"form": {}}}
#: Playwright's bound on each expectation, in milliseconds.
WAIT_MS = TIMEOUT * 1000
CHROMIUM = ("chromium", "chromium-browser")


#: The one line a machine without Chromium gets.
CHROMIUM_MISSING = (
    "chromium is missing: install Debian's Chromium with "
    "`apt-get install chromium` (as root; scripts/system-deps does it)"
)


def find_chromium() -> str | None:
    """The system's Chromium, if installed."""
    for name in CHROMIUM:
        found = shutil.which(name)
        if found is not None:
            return found
    return None


def chromium() -> str:
    """The system's Chromium; fails (never skips) naming what to install."""
    found = find_chromium()
    if found is None:
        pytest.fail(CHROMIUM_MISSING, pytrace=False)
    return found


@pytest.fixture(scope="module")
async def browser() -> AsyncGenerator[Browser]:
    path = chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def journal_args(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Extra ``serve`` arguments naming the shared journal (none: the SQLite file)."""
    if request.param == "sqlite":
        yield []
        return
    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield ["--db", url]


@pytest.fixture(scope="module")
def pair(
    server_files: ServerFilesFactory, journal_args: list[str]
) -> Iterator[tuple[HttpServer, HttpServer]]:
    """Servers A and B on one journal: alice (concurrency 1), mallory and operator ops."""
    name = "dash-pg" if journal_args else "dash-sqlite"
    files = server_files(
        f"{name}-a",
        tokens=[
            {"id": "alice", "token": ALICE, "concurrency": 1},
            {"id": MALLORY_ID, "token": MALLORY},
        ],
        operators=[{"id": "ops", "token": OPERATOR}],
    )
    other = replace(files, root=files.root.with_name(f"{name}-b"))
    other.root.mkdir(exist_ok=True)
    args = [*journal_args, "--tools", str(ASK_TOOL)]
    servers = [HttpServer(f, extra_args=args) for f in (files, other)]
    with running(*servers):
        yield servers[0], servers[1]


def journal_of(server: HttpServer) -> str:
    """The journal ``server`` serves: its ``--db`` URL, else its SQLite file."""
    args = server.extra_args
    return args[args.index("--db") + 1] if "--db" in args else str(server.files.db)


async def operator_show(db: str, task_id: str) -> dict[str, Any]:
    """``mcp-tasks tasks show TASK_ID --json`` as an operator's own process."""
    argv = [sys.executable, "-m", "mcp_tasks", "tasks", "show", task_id]
    with anyio.fail_after(2 * TIMEOUT):
        done = await anyio.run_process([*argv, "--db", db, "--json"], check=False)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def base(server: HttpServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def signed_in_page(browser: Browser, server: HttpServer) -> Page:
    """A page of ``server``'s dashboard, signed in with the operator token."""
    context = await browser.new_context(base_url=base(server))
    page = await context.new_page()
    refused = await page.goto("/dashboard")
    assert refused is not None
    assert refused.status == 401
    await page.fill("#token", OPERATOR)
    await page.click("button[type=submit]")
    await expect(page.locator("#clients")).to_be_visible(timeout=WAIT_MS)
    return page


async def test_a_task_on_one_process_is_watched_and_cancelled_from_another(
    pair: tuple[HttpServer, HttpServer], browser: Browser, gates: Gates
) -> None:
    a, b = pair
    page = await signed_in_page(browser, a)
    async with TaskClient.http(b.url, token=ALICE) as alice:
        # Alice's one slot is taken, so her next task waits in the queue.
        blocker = gates.key()
        await start_task(alice, "gate", {"key": blocker})
        await gates.hub.wait("started", blocker)
        key = gates.key()
        task = await start_task(alice, "progress_steps", {"key": key, "total": 3})
        task_id = str(task["taskId"])
        row = page.locator(f'#active tr[data-task-id="{task_id}"]')
        await expect(row.locator(".phase")).to_have_text("queued", timeout=WAIT_MS)
        await expect(row.locator(".progress")).to_have_text("")
        alice_row = page.locator("#clients tr", has_text="alice")
        await expect(alice_row.locator(".queued")).to_have_text("1")
        await expect(alice_row.locator(".running")).to_have_text("1")

        gates.release(blocker)
        await gates.hub.wait("started", f"{key}/1")
        await expect(row.locator(".phase")).to_have_text("running", timeout=WAIT_MS)
        await expect(row.locator(".progress")).to_have_text("1/3", timeout=WAIT_MS)
        await expect(row.locator(".message")).to_have_text("step 1 of 3")
        gates.release(f"{key}/1")
        await gates.hub.wait("started", f"{key}/2")
        await expect(row.locator(".progress")).to_have_text("2/3", timeout=WAIT_MS)
        await expect(row.locator(".message")).to_have_text("step 2 of 3")

        # The task's panel: its fields and its timeline, kept up to date.
        await row.locator("a.task-link").click()
        await expect(page.locator("#detail-id")).to_have_text(task_id)
        assert page.url.endswith(f"/dashboard?task={task_id}")
        await expect(page.locator("#detail dd.tool")).to_have_text("progress_steps")
        await expect(page.locator("#timeline li").first).to_contain_text("working")

        await row.locator("button.cancel").click()
        finished = page.locator(f'#finished tr[data-task-id="{task_id}"]')
        await expect(finished.locator(".status")).to_have_text(
            "cancelled", timeout=WAIT_MS
        )
        await expect(row).to_have_count(0)
        await expect(page.locator("#detail dd.status")).to_have_text(
            "cancelled", timeout=WAIT_MS
        )
        await expect(page.locator("#detail button.cancel")).to_have_count(0)
        cancelled_by = page.locator("#timeline li", has_text="operator:ops@dashboard")
        await expect(cancelled_by).to_have_count(1, timeout=WAIT_MS)
        await expect(cancelled_by.locator(".status")).to_have_text("cancelled")
        # Over MCP, on the other process: cancelled, and by the dashboard's operator.
        got = await alice.get_task(task_id)
        assert got["status"] == "cancelled"
    shown = await operator_show(journal_of(b), task_id)
    (cancel,) = [
        e
        for e in shown["events"]
        if (e["kind"], e["status"]) == ("status", "cancelled")
    ]
    assert (cancel["by"], cancel["reason"]) == (
        "operator:ops@dashboard",
        "cancelled by operator",
    )
    await page.context.close()


async def test_the_dashboard_takes_an_operator_token_only(
    pair: tuple[HttpServer, HttpServer], browser: Browser, gates: Gates
) -> None:
    a, _ = pair

    async def status(
        path: str, token: str | None, method: str = "GET", **kw: Any
    ) -> int:
        headers = kw.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            response = await http.request(method, base(a) + path, headers=headers, **kw)
        return response.status_code

    for path in ("/dashboard", "/dashboard/api/overview"):
        assert await status(path, None) == 401
        assert await status(path, ALICE) == 401  # a client's token is no operator's
        assert await status(path, OPERATOR) == 200
    # A client's token does not sign a browser in either.
    context = await browser.new_context(base_url=base(a))
    page = await context.new_page()
    await page.goto("/dashboard")
    await page.fill("#token", ALICE)
    await page.click("button[type=submit]")
    await expect(page.locator("#refused")).to_have_text(
        "that is not an operator token", timeout=WAIT_MS
    )
    await context.close()

    # A page elsewhere cannot make a signed-in browser cancel a task.
    page = await signed_in_page(browser, a)
    cookies = await page.context.cookies()
    (cookie,) = [c for c in cookies if c.get("name") == "mcp_tasks_operator"]
    assert (cookie.get("httpOnly"), cookie.get("sameSite")) == (True, "Strict")
    async with TaskClient.http(a.url, token=ALICE) as alice:
        key = gates.key()
        task = await start_task(alice, "gate", {"key": key})
        task_id = str(task["taskId"])
        await gates.hub.wait("started", key)
        forged = await status(
            "/dashboard/api/cancel",
            None,
            "POST",
            json={"taskId": task_id},
            headers={
                "Origin": "http://evil.example",
                "Cookie": f"mcp_tasks_operator={cookie.get('value')}",
            },
        )
        assert forged == 403
        assert (await alice.get_task(task_id))["status"] == "working"
        gates.release(key)
    await page.context.close()


async def test_questions_and_client_names_show_as_text_never_as_markup(
    pair: tuple[HttpServer, HttpServer], browser: Browser
) -> None:
    a, b = pair
    page = await signed_in_page(browser, a)
    async with TaskClient.http(b.url, token=MALLORY, capabilities=ELICIT) as mallory:
        task = await start_task(mallory, "ask", {"question": HOSTILE_QUESTION})
        task_id = str(task["taskId"])
        # Drawn by the script (the task came after the page): as text.
        row = page.locator(f'#waiting tr[data-task-id="{task_id}"]')
        await expect(row.locator(".question")).to_have_text(
            f"{HOSTILE_QUESTION} [answer]", timeout=WAIT_MS
        )
        await expect(row.locator(".client")).to_have_text(MALLORY_ID)
        mine = page.locator("#clients tr", has_text="mallory")
        await expect(mine.locator(".waiting")).to_have_text("1")
        # Drawn by the server on a fresh load: as text as well.
        await page.reload()
        await expect(row.locator(".question")).to_have_text(
            f"{HOSTILE_QUESTION} [answer]"
        )
        await row.locator("a.task-link").click()
        await expect(page.locator("#questions li")).to_have_text(
            f"{HOSTILE_QUESTION} [answer]", timeout=WAIT_MS
        )
        await expect(page.locator(".injected")).to_have_count(0)
        await row.locator("button.cancel").click()
        await expect(row).to_have_count(0, timeout=WAIT_MS)
        assert (await mallory.get_task(task_id))["status"] == "cancelled"
    await page.context.close()
