"""``[tracing]``: the config is checked, and tracing starts only when asked for."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from opentelemetry import trace

from mcp_tasks._config import Settings, TracingSettings
from mcp_tasks._exceptions import ConfigurationError
from mcp_tasks._logs import current_trace_id
from mcp_tasks._telemetry import chosen_exporter, start_tracing
from mcp_tasks.engine._tracing import tracing_on

from ..tracing_support import reset_tracing_globals


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return Settings.load(path)


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load(tmp_path, text)
    return caught.value.key


def test_a_tracing_table_is_read(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        '[tracing]\nexporter = "file"\nfile = "spans.jsonl"\n'
        'service_name = "tasks-eu"\nsample_ratio = 0.25\n',
    )
    assert settings.tracing == TracingSettings(
        "file", Path("spans.jsonl"), "tasks-eu", 0.25
    )


def test_an_empty_tracing_table_means_otlp(tmp_path: Path) -> None:
    # `[tracing]` alone turns it on, with the endpoint from the environment.
    assert load(tmp_path, "[tracing]\n").tracing.exporter == "otlp"
    assert load(tmp_path, "[limits]\n").tracing.exporter is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('exporter = "jaeger"', "tracing.exporter"),
        ("exporter = 1", "tracing.exporter"),
        ('exporter = "file"', "tracing.file"),
        ('exporter = "otlp"\nfile = "x.jsonl"', "tracing.file"),
        ('exporter = "file"\nfile = ""', "tracing.file"),
        ('service_name = ""', "tracing.service_name"),
        ("sample_ratio = 1.5", "tracing.sample_ratio"),
        ("sample_ratio = -0.1", "tracing.sample_ratio"),
        ("sample_ratio = nan", "tracing.sample_ratio"),
        ("sample_ratio = true", "tracing.sample_ratio"),
        ("endpoint = 'http://x'", "tracing.endpoint"),
    ],
)
def test_a_bad_tracing_value_is_refused_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    assert load_error(tmp_path, f"[tracing]\n{text}\n") == key


@pytest.mark.parametrize(
    ("exporter", "environ", "chosen"),
    [
        (None, {}, None),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/v1/traces"}, "otlp"),
        ("file", {}, "file"),
        ("none", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None),
        ("otlp", {"OTEL_SDK_DISABLED": "true"}, None),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, None),
    ],
)
def test_tracing_is_on_only_when_asked_for(
    exporter: str | None, environ: dict[str, str], chosen: str | None
) -> None:
    file = Path("s.jsonl") if exporter == "file" else None
    settings = TracingSettings(exporter, file)
    assert chosen_exporter(settings, environ) == chosen


def test_spans_go_to_the_file_and_the_provider_is_shut_down(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    settings = TracingSettings("file", path, "tasks-test")
    try:
        with start_tracing(settings, {}) as on:
            assert on
            assert tracing_on()
            with trace.get_tracer("test").start_as_current_span("hello"):
                logged_trace_id = current_trace_id()
            # Written as the span ends, not batched: a kill -9 loses nothing ended.
            (line,) = path.read_text().splitlines()
    finally:
        reset_tracing_globals()
    span = json.loads(line)
    assert span["name"] == "hello"
    assert logged_trace_id == span["context"]["trace_id"].removeprefix("0x")
    assert current_trace_id() is None  # tracing off: log lines carry none
    assert span["resource"]["attributes"]["service.name"] == "tasks-test"
    assert not tracing_on()


def test_without_the_sdk_asking_for_tracing_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry makes the import fail, as it does without the `otel` extra.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(ConfigurationError) as caught:
        with start_tracing(TracingSettings("otlp"), {}):
            pass
    assert caught.value.key == "tracing"
    assert "pip install 'mcp-tasks[otel]'" in str(caught.value)
    assert not tracing_on()


def test_a_span_file_that_cannot_be_opened_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    settings = TracingSettings("file", tmp_path / "missing" / "spans.jsonl")
    with pytest.raises(ConfigurationError) as caught:
        with start_tracing(settings, {}):
            pass
    assert caught.value.key == "tracing.file"
    assert not tracing_on()


def test_nothing_is_started_when_tracing_is_not_asked_for() -> None:
    with start_tracing(TracingSettings(), {}) as on:
        assert not on
        assert not tracing_on()
