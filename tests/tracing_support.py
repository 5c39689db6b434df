"""Spans recorded in memory, with the process's tracer provider set for one test.

OpenTelemetry lets a process set its global tracer provider once; the tests
that trace install one with the SDK's in-memory exporter and put the API's
globals back afterwards (as OpenTelemetry's own test utilities do), so that
every other test runs with tracing off, as a server without ``[tracing]``
does.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.util._once import Once


@contextmanager
def recorded_spans() -> Generator[InMemorySpanExporter]:
    """Install a tracer provider exporting to memory; restore the globals after."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reset_tracing_globals()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        reset_tracing_globals()


def reset_tracing_globals() -> None:
    """Forget the process's tracer provider (tracing off again)."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # pyright: ignore[reportPrivateUsage]
    trace._TRACER_PROVIDER = None  # pyright: ignore[reportPrivateUsage]


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    """The spans called ``name``, in the order they ended."""
    return [span for span in spans if span.name == name]


def event_names(span: ReadableSpan) -> list[str]:
    """The names of ``span``'s events, in order."""
    return [event.name for event in span.events]
