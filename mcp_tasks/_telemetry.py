"""Turning tracing on for a server process: the OpenTelemetry SDK and its exporter.

Spans are made through the OpenTelemetry API everywhere: the MCP SDK's span
of every request (named by the MCP semantic conventions, a child of the
``traceparent`` a client sends in ``params._meta``) and the engine's create
and process spans of every task (`mcp_tasks.engine._tracing`). Without a
tracer provider they record nothing. `start_tracing` installs one for the
process when the config has a ``[tracing]`` table, or when the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
variable is set; ``OTEL_SDK_DISABLED=true`` keeps it off. Exporters:

- ``otlp``: OTLP over HTTP, batched; endpoint, headers and timeouts come from
  the standard ``OTEL_EXPORTER_OTLP_*`` variables.
- ``file``: one JSON object per finished span, appended to a file as each
  span ends (for debugging and for tests: a ``kill -9`` loses no ended span).

While tracing is on, log lines of task transitions carry the trace id of
the span they are written in (`mcp_tasks._logs.set_trace_id_provider`): the
task's own trace, on whichever process.

The SDK is an optional extra (``pip install 'mcp-tasks[otel]'``); asking for
tracing without it is a configuration error naming the extra.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Generator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import IO, Any, Final

from opentelemetry import trace as trace_api

from mcp_tasks._config import TracingSettings
from mcp_tasks._exceptions import ConfigurationError
from mcp_tasks._logs import set_trace_id_provider

#: Variables that turn OTLP tracing on without a ``[tracing]`` table.
OTLP_ENDPOINT_VARIABLES: Final = (
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
_EXTRA_HINT: Final = "needs the OpenTelemetry SDK: pip install 'mcp-tasks[otel]'"


def chosen_exporter(
    settings: TracingSettings, environ: Mapping[str, str] = os.environ
) -> str | None:
    """The exporter to run (``otlp`` or ``file``), or None for no tracing."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = settings.exporter
    if exporter is None and any(environ.get(v) for v in OTLP_ENDPOINT_VARIABLES):
        exporter = "otlp"
    return None if exporter in (None, "none") else exporter


@contextmanager
def start_tracing(
    settings: TracingSettings, environ: Mapping[str, str] = os.environ
) -> Generator[bool]:
    """Install the process's tracer provider if tracing is asked for.

    Yields whether tracing is on. On exit, flushes and shuts the provider
    down, so spans of a clean shutdown are exported.

    Raises:
        ConfigurationError: tracing is asked for but the SDK is not
            installed, or the span file cannot be opened.
    """
    exporter_name = chosen_exporter(settings, environ)
    if exporter_name is None:
        yield False
        return
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise ConfigurationError("tracing", _EXTRA_HINT) from None
    handle: IO[str] | None = None
    processor: SpanProcessor
    if exporter_name == "file":
        assert settings.file is not None  # checked when the config was read
        try:
            handle = settings.file.open("a", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise ConfigurationError(
                "tracing.file", f"cannot open {settings.file}: {exc.strerror}"
            ) from None

        def one_line(span: ReadableSpan) -> str:
            return span.to_json(indent=None) + "\n"

        processor = SimpleSpanProcessor(
            ConsoleSpanExporter(out=handle, formatter=one_line)
        )
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
        except ImportError:
            raise ConfigurationError("tracing", _EXTRA_HINT) from None
        processor = BatchSpanProcessor(OTLPSpanExporter())
    provider = TracerProvider(
        resource=Resource.create(_resource(settings)),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    set_trace_id_provider(current_trace_id)
    try:
        yield True
    finally:
        set_trace_id_provider(None)
        provider.shutdown()
        if handle is not None:
            handle.close()


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits (for log lines), if any."""
    context = trace_api.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _resource(settings: TracingSettings) -> dict[str, Any]:
    try:
        own_version = version("mcp-tasks")
    except PackageNotFoundError:  # run from a source tree
        own_version = "unknown"
    return {
        "service.name": settings.service_name,
        "service.version": own_version,
        "service.instance.id": f"{socket.gethostname()}/{os.getpid()}",
    }
