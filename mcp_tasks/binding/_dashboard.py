"""The operator dashboard at ``/dashboard``: one page, a little JavaScript, a JSON API.

The page is rendered on the server (it reads right without JavaScript) from
the same data the JSON API returns; ``dashboard.js`` then polls that API every
second and redraws. Everything is read from the journal (`ops._operator`), so
any process on the journal shows every process's tasks, and a cancel is the
operator's cancel of the command line (`TaskRuntime.cancel`, named in the
task's history as ``operator:<id>@dashboard``) which the process running the
task learns from the change feed.

Paths (all behind `OpsRoutes`' operator rule, as ``/metrics`` is):

- ``GET /dashboard`` (``?task=ID`` opens a task's timeline), the page;
- ``GET /dashboard/static/{dashboard.js,dashboard.css}``, its assets
  (open: nothing secret, and the sign-in page needs the style);
- ``GET /dashboard/api/overview``; ``GET /dashboard/api/task?id=ID``;
- ``POST /dashboard/api/cancel`` with ``{"taskId": ID}`` (JSON);
- ``POST /dashboard/login`` (form field ``token``) and ``POST /dashboard/logout``.

With authentication on, a browser signs in once: the form posts the operator
token, which comes back as an HttpOnly, SameSite=Strict cookie limited to
``/dashboard``. A POST must come from the dashboard's own origin (``Origin``
names the ``Host`` it was sent to, or one of ``[http] allowed_origins``), or
carry a bearer header (which no browser adds by itself): a page elsewhere
cannot make the operator's browser cancel a task. Every response forbids
inline script and framing (`SECURITY_HEADERS`); the script builds the page
with ``textContent`` only, since task ids, tool names, status messages and
questions are whatever clients sent.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from string import Template
from typing import Any, Final, cast
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from mcp_tasks._exceptions import (
    JournalError,
    TaskNotFoundError,
    TaskTerminalError,
)
from mcp_tasks._model import OwnerId
from mcp_tasks.binding._ops import (
    OPERATOR_COOKIE,
    OPERATOR_SCOPE_KEY,
    OpsRoutes,
    bearer_token,
)
from mcp_tasks.engine import Requester, TaskRuntime
from mcp_tasks.ops import _operator

PAGE_PATH: Final = "/dashboard"
LOGIN_PATH: Final = "/dashboard/login"
LOGOUT_PATH: Final = "/dashboard/logout"
OVERVIEW_PATH: Final = "/dashboard/api/overview"
TASK_PATH: Final = "/dashboard/api/task"
CANCEL_PATH: Final = "/dashboard/api/cancel"
STATIC_PREFIX: Final = "/dashboard/static/"
_ASSETS: Final = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
#: A POST body larger than this is refused (a task id or a token fits easily).
MAX_BODY: Final = 16 * 1024

#: Sent with every dashboard response: scripts and styles from this server's
#: files only (no inline script, so injected markup cannot run), no framing.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; img-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_TERMINAL: Final = frozenset({"completed", "failed", "cancelled"})


def _asset(name: str) -> str:
    return resources.files("mcp_tasks.binding").joinpath("dashboard", name).read_text()


def _secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _error(status: int, error: str, message: str) -> Response:
    return _secured(
        JSONResponse({"error": error, "message": message}, status_code=status)
    )


# --------------------------------------------------------------- rendering


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def age_text(seconds: float | None) -> str:
    """A duration as people read it on the page: ``4.2 s``, ``3 min``, ``2 h``."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def progress_text(task: Mapping[str, Any]) -> str:
    """``3/10``, or ``3`` without a total, or nothing before any progress."""
    done = task.get("progress")
    if done is None:
        return ""
    total = task.get("total")
    return _number(done) if total is None else f"{_number(done)}/{_number(total)}"


def _number(value: object) -> str:
    # As the script prints a JSON number: 3 for 3.0, never 1e+06.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _progress_cell(task: Mapping[str, Any]) -> str:
    bar = ""
    if task.get("progress") is not None and task.get("total"):
        bar = f'<progress max="{_e(task["total"])}" value="{_e(task["progress"])}"></progress> '
    return f'<td class="progress">{bar}<span>{_e(progress_text(task))}</span></td>'


def _task_cell(task: Mapping[str, Any]) -> str:
    task_id = str(task["taskId"])
    href = f"{PAGE_PATH}?task={quote(task_id, safe='')}"
    return f'<td class="task"><a class="task-link" href="{_e(href)}" data-task-id="{_e(task_id)}">{_e(task_id)}</a></td>'


def _cancel_cell(task: Mapping[str, Any]) -> str:
    if task["status"] in _TERMINAL:
        return "<td></td>"
    return f'<td><button type="button" class="cancel" data-task-id="{_e(task["taskId"])}">Cancel</button></td>'


def _row(task: Mapping[str, Any], cells: Sequence[str]) -> str:
    return f'<tr data-task-id="{_e(task["taskId"])}">{"".join(cells)}</tr>'


def _empty(columns: int, text: str) -> str:
    return f'<tr class="empty"><td colspan="{columns}">{_e(text)}</td></tr>'


def _td(css: str, value: object) -> str:
    return f'<td class="{css}">{_e(value)}</td>'


def question_text(question: Mapping[str, Any]) -> str:
    """A question as one line: its message and, if any, the fields it asks for."""
    text = str(question.get("message") or question.get("method") or "")
    schema = question.get("requestedSchema")
    if isinstance(schema, dict):
        fields = cast("dict[str, Any]", schema).get("properties")
        if isinstance(fields, dict) and fields:
            names = ", ".join(str(name) for name in cast("dict[str, Any]", fields))
            text += f" [{names}]"
    return text


def render_tables(data: Mapping[str, Any]) -> dict[str, str]:
    """The rows of each table of the page, as escaped HTML (the first paint)."""
    clients = [
        "<tr>"
        + _td("client", c["client"])
        + _td("queued", c["queued"])
        + _td("running", c["running"])
        + _td("waiting", c["inputRequired"])
        + _td("oldest", age_text(c["oldestQueuedAgeSeconds"]))
        + _td("concurrency", c["concurrency"])
        + "</tr>"
        for c in data["clients"]
    ]
    processes = [
        "<tr>" + _td("holder", p["holder"]) + _td("running", p["running"]) + "</tr>"
        for p in data["processes"]
    ]
    active = [
        _row(t, [_task_cell(t), _td("client", t["client"]), _td("tool", t["tool"]),
                 _td("phase", t["phase"]), _progress_cell(t),
                 _td("message", t["statusMessage"]), _td("age", age_text(t["ageSeconds"])),
                 _cancel_cell(t)])
        for t in data["active"]
    ]  # fmt: skip
    waiting = [
        _row(t, [_task_cell(t), _td("client", t["client"]), _td("tool", t["tool"]),
                 _td("question", "; ".join(question_text(q) for q in t["questions"])),
                 _td("age", age_text(t["ageSeconds"])), _cancel_cell(t)])
        for t in data["waiting"]
    ]  # fmt: skip
    finished = [
        _row(t, [_task_cell(t), _td("client", t["client"]), _td("tool", t["tool"]),
                 _td("status", t["status"]), _td("message", t["statusMessage"]),
                 _td("age", age_text(t["ageSeconds"]))])
        for t in data["finished"]
    ]  # fmt: skip
    return {
        "clients": "".join(clients) or _empty(6, "no client has work"),
        "processes": "".join(processes) or _empty(2, "no process runs a task"),
        "active": "".join(active) or _empty(8, "nothing queued or running"),
        "waiting": "".join(waiting) or _empty(6, "no task waits for input"),
        "finished": "".join(finished) or _empty(6, "nothing finished yet"),
    }


def render_detail(task: Mapping[str, Any] | None, task_id: str | None) -> str:
    """The task panel: its fields, a cancel button and its timeline (escaped HTML)."""
    if task_id is None:
        return ""
    if task is None:
        return f'<p class="missing">No task {_e(task_id)}.</p>'
    fields = [
        ("Status", task["status"]), ("Client", task["client"]), ("Tool", task["tool"]),
        ("Progress", progress_text(task)), ("Message", task["statusMessage"]),
        ("Created", task["createdAt"]), ("Updated", task["lastUpdatedAt"]),
    ]  # fmt: skip
    rows = "".join(
        f'<dt>{_e(name)}</dt><dd class="{_e(name.lower())}">{_e(value)}</dd>'
        for name, value in fields
    )
    events = "".join(
        "<li>"
        + f'<time>{_e(ev["at"])}</time> <span class="kind">{_e(ev["kind"])}</span> '
        + f'<span class="status">{_e(ev["status"])}</span> '
        + f'<span class="reason">{_e(ev["reason"] or "")}</span> '
        + f'<span class="by">{_e(ev["by"] or "")}</span> '
        + f'<span class="message">{_e(ev["statusMessage"] or "")}</span></li>'
        for ev in task["events"]
    )
    questions = "".join(
        f"<li>{_e(question_text(q))}{'' if q['open'] else ' (answered)'}</li>"
        for q in task["questions"]
    )
    return (
        f'<h2>Task <code id="detail-id">{_e(task["taskId"])}</code></h2>'
        f"<dl>{rows}</dl>{_cancel_button(task)}"
        f'<h3>Timeline</h3><ol id="timeline">{events}</ol>'
        + (
            f'<h3>Questions</h3><ul id="questions">{questions}</ul>'
            if questions
            else ""
        )
    )


def _cancel_button(task: Mapping[str, Any]) -> str:
    if task["status"] in _TERMINAL:
        return ""
    return f'<p><button type="button" class="cancel" data-task-id="{_e(task["taskId"])}">Cancel this task</button></p>'


_SIGN_OUT: Final = (
    f'<form method="post" action="{LOGOUT_PATH}">'
    '<button type="submit" class="quiet">Sign out</button></form>'
)


def render_page(
    data: Mapping[str, Any],
    task: Mapping[str, Any] | None = None,
    task_id: str | None = None,
    *,
    signed_in: bool = False,
) -> str:
    """The whole page for ``data`` (an `_operator.overview`), with ``task`` opened.

    ``signed_in``: the browser holds the operator cookie (offer to sign out).
    """
    tables = render_tables(data)
    return Template(_asset("page.html")).substitute(
        at=_e(data["at"]),
        sign_out=_SIGN_OUT if signed_in else "",
        detail=render_detail(task, task_id),
        detail_hidden="" if task_id is not None else " hidden",
        **tables,
    )


def render_sign_in(message: str) -> str:
    """The sign-in page: one field for the operator token."""
    return Template(_asset("sign-in.html")).substitute(
        message=_e(message), action=_e(LOGIN_PATH)
    )


# ---------------------------------------------------------------- requests


def sign_in_refusal(request: Request, status: int, message: str) -> Response:
    """How dashboard paths refuse a request without an operator token.

    The API answers JSON (the script shows it); a page load gets the
    sign-in form.
    """
    if request.url.path.startswith("/dashboard/api/"):
        return _error(status, "operator_token_required", message)
    return _secured(HTMLResponse(render_sign_in(message), status_code=status))


def cross_origin_refusal(
    request: Request, allowed_origins: Sequence[str]
) -> Response | None:
    """A 403 for a POST a page elsewhere made the browser send; None if it is fine.

    A request with a bearer header was not sent by a browser on its own.
    Otherwise ``Origin`` must be present and name the host the request was
    sent to (or be configured in ``[http] allowed_origins``), and a browser's
    ``Sec-Fetch-Site`` must not say the request crossed sites.
    """
    if bearer_token(request.headers.get("authorization")) is not None:
        return None
    origin = request.headers.get("origin")
    if origin is None:
        return _error(403, "cross_origin", "a POST here needs an Origin header")
    if origin in allowed_origins:
        return None
    site = request.headers.get("sec-fetch-site")
    host = request.headers.get("host")
    if urlsplit(origin).netloc != host or site not in (None, "same-origin"):
        return _error(
            403,
            "cross_origin",
            f"Origin {origin!r} is not this dashboard's (Host {host!r})",
        )
    return None


async def _body(request: Request) -> bytes | None:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return body


def _requester(request: Request) -> Requester:
    # Who the task's history names: the [[operator]] id, "oauth" or "anonymous".
    name = str(request.scope.get(OPERATOR_SCOPE_KEY, "anonymous"))
    return Requester(OwnerId("operator"), scoped=False, operator=f"{name}@dashboard")


def _task_id_of(payload: object) -> str | None:
    if not isinstance(payload, dict):
        return None
    task_id = cast("dict[str, Any]", payload).get("taskId")
    return task_id if isinstance(task_id, str) and task_id else None


class Dashboard:
    """The dashboard's handlers over one runtime (see the module docstring)."""

    def __init__(self, runtime: TaskRuntime, routes: OpsRoutes) -> None:
        self.runtime = runtime
        self.routes = routes

    def install(self) -> None:
        """Add the dashboard's paths to `routes`."""
        add = self.routes.add
        add(PAGE_PATH, self.page, browser=True)
        add(OVERVIEW_PATH, self.overview, browser=True)
        add(TASK_PATH, self.task, browser=True)
        add(CANCEL_PATH, self.cancel, ("POST",), browser=True)
        add(LOGIN_PATH, self.login, ("POST",), browser=True, public=True)
        add(LOGOUT_PATH, self.logout, ("POST",), browser=True, public=True)
        for name in _ASSETS:
            add(STATIC_PREFIX + name, self.static, browser=True, public=True)
        self.routes.browser_refusal = sign_in_refusal

    async def _detail(self, task_id: str) -> dict[str, Any] | None:
        try:
            return await _operator.show_task(self.runtime, task_id)
        except TaskNotFoundError:
            return None

    async def page(self, request: Request) -> Response:
        """The page, with the current overview (and ``?task=`` opened)."""
        task_id = request.query_params.get("task") or None
        try:
            data = await _operator.overview(self.runtime)
            task = None if task_id is None else await self._detail(task_id)
        except JournalError as exc:
            return _error(503, "journal_unavailable", str(exc))
        signed_in = OPERATOR_COOKIE in request.cookies
        page = render_page(data, task, task_id, signed_in=signed_in)
        return _secured(HTMLResponse(page))

    async def static(self, request: Request) -> Response:
        """``dashboard.js`` or ``dashboard.css``."""
        name = request.url.path.removeprefix(STATIC_PREFIX)
        response = Response(_asset(name), media_type=_ASSETS[name])
        return _secured(response)

    async def overview(self, request: Request) -> Response:
        """``GET /dashboard/api/overview``: `_operator.overview` as JSON."""
        try:
            data = await _operator.overview(self.runtime)
        except JournalError as exc:
            return _error(503, "journal_unavailable", str(exc))
        return _secured(JSONResponse(data))

    async def task(self, request: Request) -> Response:
        """``GET /dashboard/api/task?id=ID``: `_operator.show_task` as JSON."""
        task_id = request.query_params.get("id")
        if not task_id:
            return _error(400, "invalid_request", "id: give the task id (?id=...)")
        try:
            task = await self._detail(task_id)
        except JournalError as exc:
            return _error(503, "journal_unavailable", str(exc))
        if task is None:
            return _error(404, "not_found", f"no task {task_id!r}")
        return _secured(JSONResponse(task))

    async def cancel(self, request: Request) -> Response:
        """``POST /dashboard/api/cancel`` ``{"taskId": ID}``: the operator's cancel."""
        refused = cross_origin_refusal(
            request, self.runtime.settings.http.allowed_origins
        )
        if refused is not None:
            return refused
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("application/json"):
            return _error(
                415, "invalid_request", 'send the task id as JSON: {"taskId": ...}'
            )
        body = await _body(request)
        if body is None:
            return _error(413, "invalid_request", f"body over {MAX_BODY} bytes")
        try:
            payload: object = json.loads(body)
        except json.JSONDecodeError as exc:
            return _error(400, "invalid_request", f"body is not JSON: {exc}")
        task_id = _task_id_of(payload)
        if task_id is None:
            return _error(400, "invalid_request", "taskId: expected a non-empty string")
        try:
            task = await self.runtime.cancel(
                _requester(request), task_id, reason=_operator.CANCEL_REASON
            )
        except TaskNotFoundError as exc:
            return _error(404, "not_found", str(exc))
        except TaskTerminalError as exc:
            return _error(409, "terminal", str(exc))
        except JournalError as exc:
            return _error(503, "journal_unavailable", str(exc))
        return _secured(JSONResponse(_operator.task_json(task)))

    async def login(self, request: Request) -> Response:
        """``POST /dashboard/login``: check the token, keep it in the cookie."""
        refused = cross_origin_refusal(
            request, self.runtime.settings.http.allowed_origins
        )
        if refused is not None:
            return refused
        body = await _body(request)
        fields = parse_qs((body or b"").decode(errors="replace"))
        token = (fields.get("token") or [""])[0].strip()
        settings = self.runtime.settings
        if settings.auth_enabled and (
            not token or await self.routes.operator_name(token) is None
        ):
            return sign_in_refusal(request, 401, "that is not an operator token")
        response = RedirectResponse(PAGE_PATH, status_code=303)
        if settings.auth_enabled:
            response.set_cookie(
                OPERATOR_COOKIE,
                token,
                path=PAGE_PATH,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return _secured(response)

    async def logout(self, request: Request) -> Response:
        """``POST /dashboard/logout``: forget the cookie."""
        refused = cross_origin_refusal(
            request, self.runtime.settings.http.allowed_origins
        )
        if refused is not None:
            return refused
        response = RedirectResponse(PAGE_PATH, status_code=303)
        response.delete_cookie(OPERATOR_COOKIE, path=PAGE_PATH)
        return _secured(response)


def install_dashboard(routes: OpsRoutes, runtime: TaskRuntime) -> Dashboard:
    """Serve the dashboard on ``routes`` (the HTTP listener's operator paths)."""
    dashboard = Dashboard(runtime, routes)
    dashboard.install()
    return dashboard
