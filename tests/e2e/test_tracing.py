"""One connected trace from a client's ``tools/call`` to the run on another process.

Two ``mcp-tasks serve --http`` processes share one journal, each writing its
spans to a file (``[tracing] exporter = "file"``, written as each span ends).
A client sends a ``traceparent`` in ``params._meta``; the first process
accepts the task and starts it, is killed (``kill -9``), and the second one
runs the task again and finishes it. Read back from both files, the spans
form one trace: the client's span, the SDK's ``tools/call`` span, the
engine's create span (first process) and the process span of the second
attempt (second process), a child of and linked to the create span.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from .support import EventHub, Gates
from .test_many_processes import (
    LEGACY,
    Journal,
    Replica,
    client,
    make_journal,
    poll_until,
)

pytestmark = pytest.mark.timeout(120)

CLIENT_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"


def traced_replica(journal: Journal, name: str) -> Replica:
    """A replica of ``journal`` writing its spans to ``<name>.spans.jsonl``."""
    base = (journal.root / "config.toml").read_text()
    config = journal.root / f"{name}.toml"
    spans = journal.root / f"{name}.spans.jsonl"
    config.write_text(f'{base}\n[tracing]\nexporter = "file"\nfile = "{spans}"\n')
    replica = journal.replica(name)
    replica.argv[replica.argv.index("--config") + 1] = str(config)
    return replica


def spans_of(journal: Journal, name: str) -> list[dict[str, Any]]:
    path = journal.root / f"{name}.spans.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def bare(value: str | None) -> str | None:
    """An id as the SDK's JSON writes it (``0x...``), without the prefix."""
    return None if value is None else value.removeprefix("0x")


def one(spans: list[dict[str, Any]], name: str, **attributes: Any) -> dict[str, Any]:
    found = [
        s
        for s in spans
        if s["name"] == name
        and all(s["attributes"].get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, [s["name"] for s in spans]
    return found[0]


@pytest.fixture
def fresh(tmp_path: Path, events_path: Path) -> Any:
    journal = make_journal(tmp_path / "own", events_path)
    try:
        yield journal
    finally:
        journal.stop_all()


async def test_a_task_finished_on_another_process_is_one_trace_with_its_call(
    fresh: Journal, gates: Gates, hub: EventHub
) -> None:
    first = traced_replica(fresh, "first")
    await anyio.to_thread.run_sync(first.start)
    key = gates.key()
    async with client(first, LEGACY) as on_first:
        result = await on_first.call_tool(
            "gate",
            {"key": key},
            task={"ttl": 60_000},
            meta={"traceparent": TRACEPARENT},
        )
        task_id = str(result["task"]["taskId"])
        await hub.wait("started", key, attempt=1)
    second = traced_replica(fresh, "second")
    await anyio.to_thread.run_sync(second.start)
    await anyio.to_thread.run_sync(first.kill)
    await hub.wait("started", key, attempt=2)
    gates.release(key)
    async with client(second, LEGACY) as on_second:
        done = await poll_until(on_second, task_id, {"completed"})
    assert done["status"] == "completed"
    await anyio.to_thread.run_sync(second.stop)  # flushes its spans

    on_first_spans = spans_of(fresh, "first")
    on_second_spans = spans_of(fresh, "second")
    call = one(on_first_spans, "tools/call gate")
    created = one(on_first_spans, "create gate", **{"messaging.message.id": task_id})
    run = one(
        on_second_spans,
        "process gate",
        **{"messaging.message.id": task_id, "mcp_tasks.task.attempt": 2},
    )
    # The SDK's request span continues the client's trace ...
    assert bare(call["context"]["trace_id"]) == CLIENT_TRACE_ID
    assert bare(call["parent_id"]) == CLIENT_SPAN_ID
    assert call["kind"] == "SpanKind.SERVER"
    assert call["attributes"]["mcp.method.name"] == "tools/call"
    assert call["attributes"]["gen_ai.tool.name"] == "gate"
    # ... the task's creation is its child, in the first process ...
    assert bare(created["parent_id"]) == bare(call["context"]["span_id"])
    assert created["kind"] == "SpanKind.PRODUCER"
    # ... and the run that finished it, on the second process after the first
    # was killed, is a child of the creation and links to it.
    assert bare(run["context"]["trace_id"]) == CLIENT_TRACE_ID
    assert bare(run["parent_id"]) == bare(created["context"]["span_id"])
    assert [bare(link["context"]["span_id"]) for link in run["links"]] == [
        bare(created["context"]["span_id"])
    ]
    assert run["kind"] == "SpanKind.CONSUMER"
    assert run["status"]["status_code"] == "OK"
    assert [event["name"] for event in run["events"]] == ["task completed"]
    assert run["resource"]["attributes"]["service.instance.id"].endswith(
        f"/{second.pid}"
    )
    # The log lines of the task's transitions carry its trace id, on both.
    assert f"accepted trace_id={CLIENT_TRACE_ID}" in first.log_text()
    completed = [
        line for line in second.log_text().splitlines() if f"task {task_id}" in line
    ]
    assert any(
        "completed attempt=2" in line and CLIENT_TRACE_ID in line for line in completed
    ), completed
