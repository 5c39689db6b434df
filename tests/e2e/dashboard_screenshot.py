"""Save the README's picture of the dashboard (``docs/dashboard.png``).

Run by ``scripts/dashboard-screenshot [OUT.png]``. It starts a real server
with a token file (clients alice, bob and carol, operator ops) and the
end-to-end tests' tools, puts tasks in every state (running with progress,
queued behind alice's concurrency, waiting for bob's answer, completed,
failed, cancelled), signs in to the dashboard in the system's Chromium and
photographs it with one task's timeline open. Gates hold the running tasks
still, so the picture is the same each time (bar times and ids).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from playwright.async_api import async_playwright, expect

from mcp_tasks.client import TaskClient

from ..unix_streams import unix_listener
from .support import TIMEOUT, EventHub, HttpServer, make_server_files, start_task
from .test_dashboard import CHROMIUM_MISSING, find_chromium

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "docs" / "dashboard.png"
OPERATOR = "operator-screenshot-token-012345"
TOKENS: dict[str, str] = {
    "alice": "alice-screenshot-token-012345678",
    "bob": "bob-screenshot-token-0123456789ab",
    "carol": "carol-screenshot-token-012345678",
}
ELICIT: dict[str, Any] = {"elicitation": {"form": {}}}


async def _populate(server: HttpServer, hub: EventHub) -> str:
    """Tasks in every state; returns the id of the one whose timeline is shown."""
    async with (
        TaskClient.http(server.url, token=TOKENS["alice"]) as alice,
        TaskClient.http(server.url, token=TOKENS["bob"], capabilities=ELICIT) as bob,
        TaskClient.http(server.url, token=TOKENS["carol"]) as carol,
    ):
        with anyio.fail_after(TIMEOUT):
            done = await start_task(carol, "echo", {"text": "hello"})
            failed = await start_task(
                carol, "protocol_error", {"code": -32001, "message": "quota"}
            )
            stopped = await start_task(carol, "gate", {"key": "shot-c"})
            await hub.wait("started", "shot-c")
            await carol.cancel_task(str(stopped["taskId"]))
            for task in (done, failed):
                await carol.poll_task(str(task["taskId"]))
            shown = await start_task(
                alice, "progress_steps", {"key": "shot-a", "total": 5}
            )
            for step in (1, 2):
                await hub.wait("started", f"shot-a/{step}")
                hub.release(f"shot-a/{step}")
            await hub.wait("started", "shot-a/3")
            await start_task(
                alice, "progress_gate", {"key": "shot-b", "done": 7, "total": 10}
            )
            await hub.wait("started", "shot-b")
            for key in ("shot-q1", "shot-q2"):  # alice's concurrency is 2: queued
                await start_task(alice, "gate", {"key": key})
            question = {
                "question": "Deploy build 1432 to production?",
                "choices": ["yes", "no"],
            }
            asked = await start_task(bob, "ask", question)
            await bob.poll_task(str(asked["taskId"]), until={"input_required"})
    return str(shown["taskId"])


async def _shoot(server: HttpServer, task_id: str, out: Path) -> None:
    path = find_chromium()
    if path is None:
        raise SystemExit(CHROMIUM_MISSING)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path)
        try:
            context = await browser.new_context(
                base_url=f"http://127.0.0.1:{server.port}",
                viewport={"width": 1280, "height": 900},
                color_scheme="light",
            )
            page = await context.new_page()
            await page.goto("/dashboard")
            await page.fill("#token", OPERATOR)
            await page.click("button[type=submit]")
            await page.goto(f"/dashboard?task={task_id}")
            await expect(page.locator("#detail-id")).to_have_text(task_id)
            await page.screenshot(path=str(out), full_page=True)
        finally:
            await browser.close()


async def main(out: Path) -> None:
    """Start the server, fill it, photograph its dashboard to ``out``, stop it."""
    with tempfile.TemporaryDirectory(prefix="mcpt-shot-") as root:
        events = Path(root) / "events.sock"
        files = make_server_files(
            Path(root) / "server",
            events=events,
            limits={"client_concurrency": 4},
            tokens=[
                {"id": "alice", "token": TOKENS["alice"], "concurrency": 2},
                {"id": "bob", "token": TOKENS["bob"]},
                {"id": "carol", "token": TOKENS["carol"]},
            ],
            operators=[{"id": "ops", "token": OPERATOR}],
        )
        server = HttpServer(
            files, extra_args=["--tools", str(ROOT / "tools" / "ask.py")]
        )
        hub = EventHub()
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.serve, await unix_listener(events))
            server.start()
            try:
                task_id = await _populate(server, hub)
                await _shoot(server, task_id, out)
            finally:
                server.stop()
                tg.cancel_scope.cancel()
    print(f"saved {out}")


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
