"""Log output of the command line: text lines for people, JSON lines for machines.

``--log-format json`` writes one JSON object per line to stderr with
``timestamp`` (ISO 8601, UTC, milliseconds), ``level``, ``logger`` and
``message``, plus every structured field the call passed with ``extra=``
(``logger.info("...", extra={"task_id": ...})``) and ``exception`` when there
is a traceback. Uses only the standard `logging` module.

Trace ids: the per-transition lines carry ``trace_id`` when the code that
logs runs in a traced context. Where that id comes from is a hook, not a
dependency: tracing (optional) installs a provider with `set_trace_id_provider`
(for OpenTelemetry, the current span's trace id as 32 hex digits); without
one, `current_trace_id` is None and the field is left out.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, Literal

LogFormat = Literal["text", "json"]

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every `LogRecord` has; anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    # uvicorn's duplicate of the message with terminal colours.
    "color_message",
}


#: Returns the trace id of the current context, or None; see the module docstring.
TraceIdProvider = Callable[[], str | None]


def _no_trace_id() -> str | None:
    return None


_trace_id_provider: TraceIdProvider = _no_trace_id


def set_trace_id_provider(provider: TraceIdProvider | None) -> None:
    """Install where log lines get their trace id from (None: no trace ids)."""
    global _trace_id_provider
    _trace_id_provider = provider or _no_trace_id


def current_trace_id() -> str | None:
    """The trace id of the current context, if a provider gives one."""
    try:
        return _trace_id_provider() or None
    except Exception:  # a broken provider must never cost a log line
        return None


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object on one line."""
        moment = datetime.fromtimestamp(record.created, UTC)
        data: dict[str, object] = {
            "timestamp": moment.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in data:
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        # default=str: a field that is not JSON (a Path, an exception) is
        # written as its text rather than losing the whole line.
        return json.dumps(data, default=str, ensure_ascii=False)


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Send every logger's records at ``level`` and above to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = (
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
