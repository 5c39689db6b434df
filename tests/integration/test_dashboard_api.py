"""The dashboard's page and JSON API in process, over a real SQLite journal.

Requests go through `OpsRoutes` (the operator rule, methods, the dashboard's
handlers) with httpx's ASGI transport; the tasks are submitted through a
second journal on the same file, as another process would. Client data is
hostile on purpose: it must come out escaped, never as markup.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from starlette.types import Receive, Scope, Send

from mcp_tasks import OwnerId, Settings, TaskId
from mcp_tasks.binding._dashboard import install_dashboard, progress_text, render_detail
from mcp_tasks.binding._ops import OPERATOR_COOKIE, OpsRoutes, standard_routes
from mcp_tasks.engine import TaskRuntime
from mcp_tasks.journal import Journal, NewTask, open_journal
from mcp_tasks.ops import Metrics

T0 = 1_700_000_000.0
HOSTILE = '<script>alert("x")</script>'
OPERATOR = "operator-token-0123456789abcdef"
ALICE = "alice-token-0123456789abcdef"
ORIGIN = {"Origin": "http://testserver"}


def queued(task_id: str, tool: str = "noop", owner: str = "alice") -> NewTask:
    return NewTask(
        task_id=TaskId(task_id),
        owner_id=OwnerId(owner),
        tool_name=tool,
        arguments={},
        created_at=T0 - 5,
        ttl_seconds=None,
        poll_interval_seconds=1.0,
        concurrency=4,
        backlog=100,
    )


@dataclass
class Served:
    http: httpx2.AsyncClient
    other: Journal  # another process's journal on the same file


async def serve(tmp_path: Path, settings: Settings) -> AsyncGenerator[Served]:
    db = tmp_path / "t.db"
    async with open_journal(db) as journal, open_journal(db) as other:
        runtime = TaskRuntime(journal, settings, {}, clock=lambda: T0)
        routes: OpsRoutes = standard_routes(runtime, Metrics(runtime))
        install_dashboard(routes, runtime)

        async def nothing_else(scope: Scope, receive: Receive, send: Send) -> None:
            raise AssertionError("a dashboard path reached the MCP app")

        app = routes.wrap(nothing_else)
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://testserver"
        ) as http:
            yield Served(http, other)


@pytest.fixture
async def open_dashboard(tmp_path: Path) -> AsyncGenerator[Served]:
    """The dashboard of a server without authentication (open, like /metrics)."""
    async for served in serve(tmp_path, Settings(synchronous="NORMAL")):
        yield served


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncGenerator[Served]:
    """The dashboard of a server with a token file: client alice, operator ops."""
    settings = Settings(
        synchronous="NORMAL",
        tokens={ALICE: "alice"},
        operator_tokens={OPERATOR: "ops"},
    )
    async for served in serve(tmp_path, settings):
        yield served


async def test_the_page_shows_client_data_escaped(open_dashboard: Served) -> None:
    await open_dashboard.other.submit(queued(HOSTILE, tool=HOSTILE, owner=HOSTILE))
    page = await open_dashboard.http.get("/dashboard")
    assert page.status_code == 200
    assert HOSTILE not in page.text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page.text
    # The task is in the first paint, queued, with a cancel button.
    assert 'data-task-id="&lt;script&gt;' in page.text
    assert '<td class="phase">queued</td>' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    detail = await open_dashboard.http.get("/dashboard", params={"task": HOSTILE})
    assert HOSTILE not in detail.text
    assert '<code id="detail-id">&lt;script&gt;' in detail.text


def test_a_missing_task_detail_escapes_the_id_asked_for() -> None:
    assert render_detail(None, HOSTILE) == (
        '<p class="missing">No task &lt;script&gt;alert(&quot;x&quot;)'
        "&lt;/script&gt;.</p>"
    )


@pytest.mark.parametrize(
    ("progress", "total", "shown"),
    [
        (None, None, ""),
        (3.0, None, "3"),
        (2.5, 10.0, "2.5/10"),
        (1e6, 2e6, "1000000/2000000"),
    ],
)
def test_progress_reads_as_the_script_prints_it(
    progress: float | None, total: float | None, shown: str
) -> None:
    assert progress_text({"progress": progress, "total": total}) == shown


async def test_the_overview_lists_another_process_tasks(open_dashboard: Served) -> None:
    await open_dashboard.other.submit(queued("t-1"))
    data = (await open_dashboard.http.get("/dashboard/api/overview")).json()
    (alice,) = data["clients"]
    assert (alice["client"], alice["queued"], alice["oldestQueuedAgeSeconds"]) == (
        "alice",
        1,
        5,
    )
    (task,) = data["active"]
    assert (task["taskId"], task["phase"], task["ageSeconds"]) == ("t-1", "queued", 5)
    assert (data["waiting"], data["finished"]) == ([], [])


async def test_the_task_api_answers_404_400_and_the_history(
    open_dashboard: Served,
) -> None:
    http = open_dashboard.http
    missing = await http.get("/dashboard/api/task", params={"id": "nope"})
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    no_id = await http.get("/dashboard/api/task")
    assert no_id.status_code == 400
    assert "id" in no_id.json()["message"]
    await open_dashboard.other.submit(queued("t-2"))
    shown = (await http.get("/dashboard/api/task", params={"id": "t-2"})).json()
    assert shown["status"] == "working"
    assert [e["status"] for e in shown["events"]] == ["working"]


async def test_wrong_methods_are_405(open_dashboard: Served) -> None:
    http = open_dashboard.http
    posted = await http.post("/dashboard/api/overview", headers=ORIGIN)
    assert posted.status_code == 405
    assert posted.headers["allow"] == "GET, HEAD"
    got = await http.get("/dashboard/api/cancel")
    assert got.status_code == 405
    assert got.headers["allow"] == "POST"


async def test_cancel_records_the_dashboard_operator(open_dashboard: Served) -> None:
    http = open_dashboard.http
    await open_dashboard.other.submit(queued("t-3"))
    done = await http.post(
        "/dashboard/api/cancel", json={"taskId": "t-3"}, headers=ORIGIN
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "cancelled"
    events = await open_dashboard.other.events(TaskId("t-3"))
    assert (events[-1].status, events[-1].by, events[-1].reason) == (
        "cancelled",
        "operator:anonymous@dashboard",
        "cancelled by operator",
    )
    again = await http.post(
        "/dashboard/api/cancel", json={"taskId": "t-3"}, headers=ORIGIN
    )
    assert again.status_code == 409
    assert "terminal status 'cancelled'" in again.json()["message"]
    unknown = await http.post(
        "/dashboard/api/cancel", json={"taskId": "nope"}, headers=ORIGIN
    )
    assert unknown.status_code == 404


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        (b'{"taskId": 7}', "application/json", 400, "taskId"),
        (b"[]", "application/json", 400, "taskId"),
        (b"{", "application/json", 400, "not JSON"),
        (b"taskId=t", "application/x-www-form-urlencoded", 415, "JSON"),
        (b'{"taskId": "' + b"x" * 20_000 + b'"}', "application/json", 413, "bytes"),
    ],
)
async def test_a_bad_cancel_request_is_refused_saying_why(
    open_dashboard: Served, body: bytes, content_type: str, status: int, says: str
) -> None:
    refused = await open_dashboard.http.post(
        "/dashboard/api/cancel",
        content=body,
        headers={**ORIGIN, "Content-Type": content_type},
    )
    assert refused.status_code == status
    assert says in refused.json()["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no Origin at all
        {"Origin": "http://evil.example"},
        {"Origin": "http://testserver", "Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_a_cross_origin_cancel_is_refused(
    open_dashboard: Served, headers: dict[str, str]
) -> None:
    await open_dashboard.other.submit(queued("t-4"))
    refused = await open_dashboard.http.post(
        "/dashboard/api/cancel", json={"taskId": "t-4"}, headers=headers
    )
    assert refused.status_code == 403
    assert refused.json()["error"] == "cross_origin"
    task = await open_dashboard.other.get(TaskId("t-4"))
    assert task is not None
    assert task.status == "working"


async def test_with_tokens_only_an_operator_gets_in(guarded: Served) -> None:
    http = guarded.http
    page = await http.get("/dashboard")
    assert page.status_code == 401
    assert 'name="token"' in page.text  # the sign-in form
    api = await http.get("/dashboard/api/overview")
    assert (api.status_code, api.json()["error"]) == (401, "operator_token_required")
    for token in (ALICE, "x" * 32):
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await http.get("/dashboard", headers=bearer)).status_code == 401
        cookie = {"Cookie": f"{OPERATOR_COOKIE}={token}"}
        assert (await http.get("/dashboard", headers=cookie)).status_code == 401
        signed = await http.post(
            "/dashboard/login", data={"token": token}, headers=ORIGIN
        )
        assert signed.status_code == 401
        assert OPERATOR_COOKIE not in signed.cookies
    bearer = {"Authorization": f"Bearer {OPERATOR}"}
    assert (await http.get("/dashboard", headers=bearer)).status_code == 200
    # The style is open (the sign-in page uses it); the script and data are not secret
    # either way, but the API is.
    assert (await http.get("/dashboard/static/dashboard.css")).status_code == 200


async def test_sign_in_sets_a_strict_cookie_the_api_accepts(guarded: Served) -> None:
    http = guarded.http
    signed = await http.post(
        "/dashboard/login", data={"token": OPERATOR}, headers=ORIGIN
    )
    assert (signed.status_code, signed.headers["location"]) == (303, "/dashboard")
    cookie = signed.headers["set-cookie"].lower()
    for attribute in ("httponly", "samesite=strict", "path=/dashboard"):
        assert attribute in cookie
    # httpx keeps the cookie, as a browser does.
    assert (await http.get("/dashboard/api/overview")).status_code == 200
    await guarded.other.submit(queued("t-5"))
    done = await http.post(
        "/dashboard/api/cancel", json={"taskId": "t-5"}, headers=ORIGIN
    )
    assert done.status_code == 200
    events = await guarded.other.events(TaskId("t-5"))
    assert events[-1].by == "operator:ops@dashboard"
    # A sign-in from elsewhere is refused before the token is even looked at.
    elsewhere = await http.post(
        "/dashboard/login",
        data={"token": OPERATOR},
        headers={"Origin": "http://evil.example"},
    )
    assert elsewhere.status_code == 403
    out = await http.post("/dashboard/logout", headers=ORIGIN)
    assert out.status_code == 303
    assert (await http.get("/dashboard/api/overview")).status_code == 401
