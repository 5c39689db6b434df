"""Human output of the operator commands: `rich` tables of the JSON-ready data.

`rich` is imported here only, and this module only by the commands that
print for people (``--json`` output never loads it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

_STATUS_STYLE = {
    "working": "cyan",
    "input_required": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def _status(data: Mapping[str, Any]) -> Text:
    status = str(data["status"])
    shown = status
    phase = data.get("phase")
    if status == "working" and phase in ("queued", "parked"):
        shown = f"working ({phase})"
    return Text(shown, style=_STATUS_STYLE.get(status, ""))


def _progress(data: Mapping[str, Any]) -> str:
    progress = data.get("progress")
    if progress is None:
        return ""
    total = data.get("total")
    if total:
        return f"{100 * float(progress) / float(total):.0f}%"
    return f"{progress:g}"


def tasks_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """``tasks list``: one line per task, newest first."""
    table = Table(title=f"{len(rows)} task(s), newest first", title_justify="left")
    for column in ("task", "client", "tool", "status", "attempt", "progress"):
        table.add_column(column, no_wrap=column == "task")
    table.add_column("message", overflow="fold")
    for row in rows:
        table.add_row(
            str(row["taskId"]),
            str(row["client"]),
            str(row["tool"]),
            _status(row),
            str(row.get("attempts", "")),
            _progress(row),
            str(row.get("statusMessage") or ""),
        )
    return table


def _summary(data: Mapping[str, Any]) -> Table:
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    for key in ("taskId", "client", "tool", "createdAt", "lastUpdatedAt"):
        summary.add_row(key, str(data.get(key)))
    summary.add_row("status", _status(data))
    summary.add_row("statusMessage", str(data.get("statusMessage") or ""))
    if data.get("queuedAhead") is not None:
        summary.add_row("queuedAhead", str(data["queuedAhead"]))
    if data.get("progress") is not None:
        summary.add_row("progress", _progress(data))
    for key in ("result", "error", "toolError"):
        if key in data:
            summary.add_row(key, json.dumps(data[key], ensure_ascii=False)[:2000])
    return summary


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _json(value: Any, limit: int = 500) -> str:
    return "" if value is None else json.dumps(value, ensure_ascii=False)[:limit]


def task_detail(data: Mapping[str, Any]) -> RenderableType:
    """``tasks show``: the task, its history, steps and questions."""
    parts: list[RenderableType] = [_summary(data)]
    events = [
        (
            e["at"],
            e["kind"],
            e["status"],
            e["reason"],
            str(e.get("by") or ""),
            str(e.get("statusMessage") or ""),
        )
        for e in data.get("events", [])
    ]
    parts.append(
        _table("history", ("at", "kind", "status", "reason", "by", "message"), events)
    )
    asked: list[Mapping[str, Any]] = data.get("questions") or []
    questions = [
        (
            q["key"],
            "yes" if q["open"] else "no",
            str(q["message"] or ""),
            _json(q["response"]),
        )
        for q in asked
    ]
    if questions:
        parts.append(
            _table("questions", ("key", "open", "message", "response"), questions)
        )
    recorded: Mapping[str, Any] = data.get("steps") or {}
    steps = [(key, _json(value)) for key, value in recorded.items()]
    if steps:
        parts.append(_table("recorded steps", ("step", "result"), steps))
    return Group(*parts)


def stats_view(data: Mapping[str, Any]) -> RenderableType:
    """``stats`` and ``top``: per-client queues and per-process running tasks."""
    clients = Table(title=f"clients at {data['at']}", title_justify="left")
    for column in (
        "client", "queued", "running", "parked", "input required",
        "oldest queued", "limit", "backlog",
    ):  # fmt: skip
        clients.add_column(column, justify="left" if column == "client" else "right")
    for c in data["clients"]:
        age = c["oldestQueuedAgeSeconds"]
        clients.add_row(
            c["client"], str(c["queued"]), str(c["running"]), str(c["parked"]),
            str(c["inputRequired"]), "" if age is None else f"{age:.1f}s",
            str(c["concurrency"]), str(c["backlog"]),
        )  # fmt: skip
    if not data["clients"]:
        clients.caption = "no client has unfinished work"
    processes = Table(title="processes running tasks", title_justify="left")
    processes.add_column("process (lease holder)")
    processes.add_column("running", justify="right")
    for p in data["processes"]:
        processes.add_row(p["holder"], str(p["running"]))
    return Group(clients, processes)
