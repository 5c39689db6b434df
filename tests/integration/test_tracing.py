"""Trace context crosses the queue: a task's runs continue the trace of its call.

Two `TaskRuntime` objects on one journal file stand for two processes. The
test plays the MCP SDK's part: it opens the ``tools/call`` span (a child of
the client's ``traceparent``) around the submit, as the SDK's middleware
does around every request. Spans go to the SDK's in-memory exporter.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from mcp_tasks import (
    OwnerId,
    Requester,
    RetryLater,
    Settings,
    TaskContext,
    TaskRuntime,
    TaskStatus,
    tool,
)
from mcp_tasks._toolapi import ToolSpec, spec_of
from mcp_tasks.engine._tracing import TRACE_META_KEY

from ..tracing_support import event_names, named, recorded_spans
from .gated_tools import Gates, make_tools

TIMEOUT = 10.0
ALICE = Requester(OwnerId("alice"))
#: A client's trace context, as it sends it in ``params._meta``.
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
CLIENT_META = {"traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"}
CAN_ASK: dict[str, Any] = {"clientCapabilities": {"elicitation": {"form": {}}}}
YES = {"action": "accept", "content": {"yes": True}}


def traced_tools(gates: Gates) -> dict[str, ToolSpec]:
    tries: dict[str, int] = {}

    @tool(max_attempts=2)
    async def stepper(ctx: TaskContext, key: str) -> str:
        """Record a step, ask to be retried once, then finish."""
        fetched = await ctx.step("fetch", lambda: {"rows": 3})
        tries[key] = tries.get(key, 0) + 1
        if tries[key] == 1:
            raise RetryLater("upstream busy", after_seconds=0)
        return f"{fetched['rows']} rows"

    specs = {"stepper": spec_of(stepper)}
    return make_tools(gates) | {k: v for k, v in specs.items() if v is not None}


@pytest.fixture
def spans() -> Generator[InMemorySpanExporter]:
    with recorded_spans() as exporter:
        yield exporter


@pytest.fixture
def gates() -> Gates:
    return Gates()


OpenRuntime = Callable[..., AbstractAsyncContextManager[TaskRuntime]]


@pytest.fixture
def open_runtime(tmp_path: Path, gates: Gates) -> OpenRuntime:
    tools = traced_tools(gates)

    @asynccontextmanager
    async def open_(**changes: Any) -> AsyncGenerator[TaskRuntime]:
        base: dict[str, Any] = {
            "synchronous": "NORMAL",
            "shutdown_grace_seconds": 0.05,
            "feed_poll_seconds": 0.02,
        }
        settings = Settings(**(base | changes))
        async with TaskRuntime.open(tmp_path / "tasks.db", settings, tools) as runtime:
            try:
                yield runtime
            finally:
                gates.release_threads()

    return open_


@asynccontextmanager
async def tools_call(name: str) -> AsyncGenerator[None]:
    """The span the MCP SDK opens around a ``tools/call`` from the client."""
    parent = propagate.extract(CLIENT_META)
    tracer = trace.get_tracer("test-sdk")
    with tracer.start_as_current_span(
        f"tools/call {name}", context=parent, kind=SpanKind.SERVER
    ):
        yield


def trace_of(
    finished: tuple[ReadableSpan, ...], tool_name: str
) -> tuple[ReadableSpan, ReadableSpan, list[ReadableSpan]]:
    """The ``tools/call`` span of ``tool_name``, its create span and its runs."""
    (call,) = named(finished, f"tools/call {tool_name}")
    (created,) = [
        s
        for s in named(finished, f"create {tool_name}")
        if parent_id(s) == span_id(call)
    ]
    runs = [
        s
        for s in named(finished, f"process {tool_name}")
        if parent_id(s) == span_id(created)
    ]
    return call, created, runs


def hex_id(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else hex_id(span.parent.span_id, 16)


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return hex_id(span.context.span_id, 16)


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return hex_id(span.context.trace_id, 32)


async def test_a_run_on_another_process_continues_the_trace_of_its_call(
    open_runtime: OpenRuntime, gates: Gates, spans: InMemorySpanExporter
) -> None:
    async with open_runtime(workers=1) as submitter:
        # The submitting process's only worker is busy: the other one runs it.
        await submitter.submit(ALICE, "gate", {"key": "busy"})
        await gates.wait_started("busy")
        async with open_runtime() as runner:
            async with tools_call("gate"):
                task = await submitter.submit(ALICE, "gate", {"key": "k"})
            await gates.wait_started("k")
            gates.open("k")
            with anyio.fail_after(TIMEOUT):
                done = await runner.wait_settled(ALICE, task.task_id)
            gates.open("busy")
    assert done.status is TaskStatus.COMPLETED
    finished = spans.get_finished_spans()
    (call,) = named(finished, "tools/call gate")
    create = [
        s for s in named(finished, "create gate") if parent_id(s) == span_id(call)
    ]
    assert len(create) == 1
    (created,) = create
    (process,) = [
        s for s in named(finished, "process gate") if parent_id(s) == span_id(created)
    ]
    # One trace, the client's: call -> create (PRODUCER) -> process (CONSUMER).
    assert parent_id(call) == CLIENT_SPAN_ID
    assert {trace_id(call), trace_id(created), trace_id(process)} == {CLIENT_TRACE_ID}
    assert created.kind is SpanKind.PRODUCER
    assert process.kind is SpanKind.CONSUMER
    # The run links to the creation context, and says where it ran.
    assert [hex_id(link.context.span_id, 16) for link in process.links] == [
        span_id(created)
    ]
    attributes = dict(process.attributes or {})
    assert attributes["mcp_tasks.holder"] == runner.holder
    assert attributes["mcp_tasks.holder"] != submitter.holder
    assert attributes["messaging.message.id"] == task.task_id
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["gen_ai.tool.name"] == "gate"
    assert attributes["mcp_tasks.task.status"] == "completed"
    assert dict(created.attributes or {})["messaging.operation.type"] == "create"
    assert process.status.status_code is StatusCode.OK
    assert event_names(process) == ["task completed"]


async def test_each_run_of_a_task_is_a_span_of_its_trace_with_what_it_wrote(
    open_runtime: OpenRuntime, spans: InMemorySpanExporter
) -> None:
    async with open_runtime() as runtime:
        async with tools_call("stepper"):
            task = await runtime.submit(ALICE, "stepper", {"key": "s"})
        with anyio.fail_after(TIMEOUT):
            done = await runtime.wait_for(ALICE, task.task_id, lambda t: t.is_terminal)
    assert done.status is TaskStatus.COMPLETED, done.status_message
    _, _, (first, second) = trace_of(spans.get_finished_spans(), "stepper")
    assert {trace_id(first), trace_id(second)} == {CLIENT_TRACE_ID}
    assert event_names(first) == ["step recorded", "retry scheduled"]
    assert event_names(second) == ["task completed"]  # the step replayed
    retry = first.events[1].attributes or {}
    assert str(retry["mcp_tasks.message"]).startswith("Retrying in 0.0 s")
    assert dict(second.attributes or {})["mcp_tasks.task.retries"] == 1


async def test_a_question_ends_a_run_and_the_answer_starts_the_next_in_the_trace(
    open_runtime: OpenRuntime, spans: InMemorySpanExporter
) -> None:
    async with open_runtime() as runtime:
        async with tools_call("questions"):
            task = await runtime.submit(ALICE, "questions", {}, request_meta=CAN_ASK)
        with anyio.fail_after(TIMEOUT):
            waiting = await runtime.wait_settled(ALICE, task.task_id)
        assert waiting.status is TaskStatus.INPUT_REQUIRED
        await runtime.answer(ALICE, task.task_id, {"first": YES, "second": YES})
        with anyio.fail_after(TIMEOUT):
            await runtime.wait_for(ALICE, task.task_id, lambda t: t.is_terminal)
    _, _, (asked, resumed) = trace_of(spans.get_finished_spans(), "questions")
    assert event_names(asked) == ["input requested"]
    assert (asked.events[0].attributes or {})["mcp_tasks.questions"] == "first, second"
    assert dict(asked.attributes or {})["mcp_tasks.task.status"] == "input_required"
    assert event_names(resumed) == ["task completed"]


async def test_a_failed_run_is_an_error_span(
    open_runtime: OpenRuntime, spans: InMemorySpanExporter
) -> None:
    async with open_runtime() as runtime:
        task = await runtime.submit(ALICE, "raises", {"kind": "protocol"})
        with anyio.fail_after(TIMEOUT):
            done = await runtime.wait_for(ALICE, task.task_id, lambda t: t.is_terminal)
    assert done.status is TaskStatus.FAILED
    (process,) = named(spans.get_finished_spans(), "process raises")
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "no such resource"


async def test_a_task_handed_back_at_shutdown_runs_again_in_the_same_trace(
    open_runtime: OpenRuntime, gates: Gates, spans: InMemorySpanExporter
) -> None:
    async with open_runtime(workers=1) as survivor:
        # The survivor's only worker is busy, so the leaving process runs it.
        await survivor.submit(ALICE, "gate", {"key": "busy"})
        await gates.wait_started("busy")
        async with open_runtime(workers=1) as leaving:
            async with tools_call("gate"):
                task = await leaving.submit(ALICE, "gate", {"key": "k"})
            await gates.wait_started("k")
            gates.reset_started("k")
        gates.open("busy")
        await gates.wait_started("k")  # again, on the survivor
        gates.open("k")
        with anyio.fail_after(TIMEOUT):
            await survivor.wait_for(ALICE, task.task_id, lambda t: t.is_terminal)
    _, _, (first, second) = trace_of(spans.get_finished_spans(), "gate")
    assert event_names(first) == ["handed back"]
    assert dict(first.attributes or {})["mcp_tasks.holder"] == leaving.holder
    assert dict(second.attributes or {})["mcp_tasks.holder"] == survivor.holder
    assert event_names(second) == ["task completed"]


async def test_with_tracing_off_a_callers_context_is_still_carried(
    open_runtime: OpenRuntime,
) -> None:
    # No tracer provider: nothing is recorded, but the caller's traceparent is
    # stored with the task, so a process that does trace continues the trace.
    async with open_runtime() as runtime:
        token = otel_context.attach(propagate.extract(CLIENT_META))
        try:
            carried = await runtime.submit(ALICE, "structured", {"count": 1})
        finally:
            otel_context.detach(token)
        plain = await runtime.submit(ALICE, "structured", {"count": 2})
        carried_meta = await runtime.journal.request_meta(carried.task_id)
        plain_meta = await runtime.journal.request_meta(plain.task_id)
    assert carried_meta[TRACE_META_KEY] == {
        "traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
    }
    assert TRACE_META_KEY not in plain_meta
