"""Trace context across the queue: a task's runs continue the trace that created it.

A task outlives the request that created it and may run on another process,
after a restart, more than once. Following the OpenTelemetry messaging
conventions, submitting a task is a *create* span (kind PRODUCER) in the
caller's trace (under the MCP SDK's ``tools/call`` span, itself a child of
the ``traceparent`` the client sent in ``params._meta``). The create span's
context is stored with the task, in its request meta under `TRACE_META_KEY`
as W3C ``traceparent``/``tracestate``, so it survives in the journal. Every
run of the task, on whatever process claims it, is a *process* span (kind
CONSUMER) that is a child of that creation context and links to it: one
connected trace from the call to every attempt. What a run writes (steps,
questions, retries, waits, the outcome, a lost lease) is recorded on its
span as events as the journal accepts each write.

Spans go through the OpenTelemetry API only. Until a tracer provider is
installed (``[tracing]`` in the config, `mcp_tasks._telemetry`, or an
embedding application's own) nothing is recorded and each submit and run
costs one type check; a caller's ``traceparent`` is still carried through,
so a process that does trace continues the caller's trace.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from contextlib import contextmanager
from typing import Any, Final, final

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanKind, StatusCode

from mcp_tasks._model import OwnerId, TaskId
from mcp_tasks.journal import Claimed

#: Where a task's creation context is kept in its stored request meta.
TRACE_META_KEY: Final = "trace"
#: The instrumentation scope of the engine's spans.
TRACER_NAME: Final = "mcp_tasks"
#: ``messaging.system`` of the task queue (not one of the registered systems).
MESSAGING_SYSTEM: Final = "mcp_tasks"

_NO_PROVIDER: Final = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


def tracing_on() -> bool:
    """Whether a tracer provider is installed (spans are recorded and exported)."""
    # The API hands out a proxy until a provider is set; then the real one.
    return not isinstance(trace.get_tracer_provider(), _NO_PROVIDER)


@contextmanager
def creating(
    task_id: TaskId, tool_name: str, owner_id: OwnerId
) -> Generator[dict[str, str] | None]:
    """The create span of a task; yields the trace context to store with it.

    Yields None when there is nothing to carry (no trace around the call and
    tracing off). With tracing off, a caller's context is carried unchanged.
    """
    if not tracing_on():
        yield _carrier()
        return
    attributes = _task_attributes(task_id, tool_name, owner_id)
    attributes["messaging.operation.type"] = "create"
    attributes["messaging.operation.name"] = "create"
    with _tracer().start_as_current_span(
        f"create {tool_name}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        yield _carrier()


def _tracer() -> trace.Tracer:
    # Asked of the provider installed now, not cached at import: an embedding
    # application (or a test) may install its provider after importing us.
    return trace.get_tracer(TRACER_NAME)


def _carrier() -> dict[str, str] | None:
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


@final
class RunTrace:
    """The process span of one run, and the events its writes add to it."""

    OFF: RunTrace

    def __init__(self, span: Span | None) -> None:
        self._span = span

    @classmethod
    def start(cls, claimed: Claimed, holder: str) -> RunTrace:
        """Open the span of a run that is starting (`OFF` when tracing is off)."""
        if not tracing_on():
            return cls.OFF
        created = _creation_context(claimed.request_meta)
        attributes = _task_attributes(
            claimed.task_id, claimed.tool_name, claimed.owner_id
        )
        attributes |= {
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": claimed.tool_name,
            "mcp_tasks.task.attempt": claimed.attempt,
            "mcp_tasks.task.retries": claimed.retries,
            "mcp_tasks.holder": holder,
        }
        links = [] if created is None else [Link(created)]
        parent = (
            None
            if created is None
            else trace.set_span_in_context(NonRecordingSpan(created))
        )
        span = _tracer().start_span(
            f"process {claimed.tool_name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        return cls(span)

    @contextmanager
    def current(self) -> Generator[None]:
        """Make the run's span current (the tool's own spans become its children)."""
        if self._span is None:
            yield
            return
        with trace.use_span(
            self._span,
            end_on_exit=False,
            record_exception=True,
            set_status_on_exception=True,
        ):
            yield

    def event(self, name: str, **attributes: str | int | float) -> None:
        """Record that the run did something the journal accepted."""
        if self._span is not None:
            self._span.add_event(
                name, {f"mcp_tasks.{k}": v for k, v in attributes.items()}
            )

    def ended(self, status: str, message: str | None = None) -> None:
        """The run's outcome: the task's status as it ended (or was set aside)."""
        if self._span is None:
            return
        self._span.set_attribute("mcp_tasks.task.status", status)
        if status == "failed":
            self._span.set_status(StatusCode.ERROR, message)
        elif status == "completed":
            self._span.set_status(StatusCode.OK)

    def close(self) -> None:
        """End the span (idempotent)."""
        span, self._span = self._span, None
        if span is not None:
            span.end()


RunTrace.OFF = RunTrace(None)


def _creation_context(meta: Mapping[str, Any]) -> trace.SpanContext | None:
    carrier = meta.get(TRACE_META_KEY)
    if not isinstance(carrier, Mapping):
        return None
    try:
        context = propagate.extract(
            {str(k): str(v) for k, v in carrier.items()}  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
        )
    except (TypeError, ValueError):
        return None  # stored by hand, or by a future version: run untraced
    created = trace.get_current_span(context).get_span_context()
    return created if created.is_valid else None


def _task_attributes(
    task_id: TaskId, tool_name: str, owner_id: OwnerId
) -> dict[str, str | int]:
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.destination.name": tool_name,
        "messaging.message.id": task_id,
        "mcp_tasks.task.id": task_id,
        "mcp_tasks.client": owner_id,
    }
