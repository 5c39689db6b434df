"""Per-transition log lines carry a trace id when a provider gives one (the hook)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from mcp_tasks._logs import JsonFormatter, current_trace_id, set_trace_id_provider
from mcp_tasks.engine._engine import _transition_line

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(autouse=True)
def no_provider_afterwards() -> Iterator[None]:
    yield
    set_trace_id_provider(None)


def transition(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mcp_tasks.engine"):
        _transition_line(None, "t-1", "completed", tool="echo", owner="alice")
    (record,) = caplog.records
    return record


def test_without_a_provider_there_is_no_trace_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = transition(caplog)
    assert not hasattr(record, "trace_id")
    assert "trace_id" not in record.getMessage()
    assert current_trace_id() is None


def test_a_providers_trace_id_is_a_field_and_in_the_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    set_trace_id_provider(lambda: TRACE)
    record = transition(caplog)
    assert getattr(record, "trace_id") == TRACE  # noqa: B009
    assert f"trace_id={TRACE}" in record.getMessage()
    assert json.loads(JsonFormatter().format(record))["trace_id"] == TRACE


def test_no_current_trace_means_no_field(caplog: pytest.LogCaptureFixture) -> None:
    set_trace_id_provider(lambda: None)
    assert not hasattr(transition(caplog), "trace_id")


def test_a_broken_provider_costs_the_trace_id_not_the_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> str | None:
        raise RuntimeError("tracer gone")

    set_trace_id_provider(broken)
    record = transition(caplog)
    assert not hasattr(record, "trace_id")
    assert "t-1" in record.getMessage()
