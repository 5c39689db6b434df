"""Fixture tools for the official MCP conformance suite (``scripts/conformance``).

Served by ``mcp-tasks serve --tools tests/conformance/fixture_tools.py``. Every
tool here is one that a scenario of ``@modelcontextprotocol/conformance`` calls
by name; ``conformance/SCENARIOS.md`` (section 6) says which scenario needs
which tool and what it must do.

Rules this module keeps:

- ``greet`` is defined first: ``tools/list`` follows definition order, and
  ``http-header-validation`` calls the first listed tool with ``{}`` on the
  2026-07-28 wire (so it must be synchronous).
- Every tool has a docstring (its description) and a name matching
  ``[A-Za-z0-9_.-]``; the set and order of tools never change.
- Bodies are deterministic up to their questions: a body that asks is
  suspended and re-run from the top once answered, so questions use fixed
  ``key=`` values (the keys the suite's scenario descriptions use).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import wave
import zlib
from collections.abc import Mapping
from typing import Annotated, Any, cast

import anyio
import pydantic

from mcp_tasks import (
    Answer,
    InputNotSupportedError,
    ProtocolError,
    Question,
    TaskContext,
    ToolError,
    ToolResult,
    tool,
)
from mcp_tasks.engine._preflight import PreflightContext

# --------------------------------------------------------------------- content


def _png_1x1() -> str:
    """A valid 1x1 red PNG, base64 encoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(png).decode()


def _wav_silence() -> str:
    """A valid WAV file (10 ms of 8 kHz mono silence), base64 encoded."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x00" * 80)
    return base64.b64encode(buffer.getvalue()).decode()


PNG_BASE64 = _png_1x1()
WAV_BASE64 = _wav_silence()

NAME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "required": ["name"],
}
OK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
}

#: The exact inputSchema the json-schema-2020-12 scenario expects (SEP-1613,
#: SEP-2106), as in the suite's scenario description.
JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
            },
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {
        "properties": {"contactMethod": {"const": "phone"}},
        "required": ["contactMethod"],
    },
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def _field(answer: Answer, name: str) -> Any:
    """A field of an accepted form answer (None if declined or absent)."""
    content = answer.content if answer.accepted else None
    if isinstance(content, Mapping):
        return cast("Mapping[str, Any]", content).get(name)
    return None


def _root_uris(answer: Answer) -> list[str]:
    """The root URIs of a ``roots/list`` answer."""
    roots = answer.raw.get("roots")
    if not isinstance(roots, list):
        return []
    return [
        str(cast("Mapping[str, Any]", root).get("uri"))
        for root in cast("list[object]", roots)
        if isinstance(root, Mapping)
    ]


def _content_json(content: Any) -> str:
    if isinstance(content, pydantic.BaseModel):
        content = content.model_dump(mode="json")
    return json.dumps(content, sort_keys=True, separators=(",", ":"))


# ------------------------------------------------------- tasks extension tools


async def _take(seconds: float) -> None:
    """Let ``seconds`` pass (cancellable): a body that lasts, not a synchronisation."""
    if seconds > 0:
        with anyio.move_on_after(seconds):
            await anyio.sleep_forever()


@tool(task_support="forbidden")
async def greet(name: str) -> str:
    """Greet someone by name (synchronous; never a task)."""
    return f"Hello, {name}!"


@tool(task_support="optional")
async def slow_compute(
    seconds: Annotated[float, pydantic.Field(ge=0)], label: str = ""
) -> str:
    """Sleep ``seconds`` seconds (cancellable), then report it; ``0`` returns at once."""
    await _take(seconds)
    suffix = f" ({label})" if label else ""
    return f"Computed for {seconds:g} s{suffix}."


@tool(task_support="required")
async def failing_job() -> str:
    """Run for about a second, then end with a tool execution error (isError)."""
    await _take(1)
    raise ToolError("failing_job failed on purpose (tool execution error)")


@tool(task_support="optional")
async def protocol_error_job() -> str:
    """End with a JSON-RPC-level error, so the task ends ``failed``."""
    raise ProtocolError(-32603, "protocol_error_job failed on purpose")


@tool(task_support="optional")
async def confirm_delete(ctx: TaskContext, filename: str) -> str:
    """Ask the user to confirm deleting ``filename`` (one elicitation), then answer."""
    answer = await ctx.elicit(
        f"Delete {filename}?",
        {
            "type": "object",
            "properties": {"confirm": {"type": "boolean"}},
            "required": ["confirm"],
        },
        key="confirm",
    )
    if _field(answer, "confirm") is True:
        return f"Deleted {filename} (simulated)."
    return f"Kept {filename} ({answer.action})."


@tool(task_support="optional")
async def multi_input(ctx: TaskContext) -> str:
    """Ask two questions at once (two elicitations); finish when both are answered."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "confirm": {"type": "boolean"}},
        "required": ["name"],
    }
    answers = await ctx.ask(
        {
            "first": Question.form("First input: your name?", schema),
            "second": Question.form("Second input: another name?", schema),
        }
    )
    names = [str(_field(answers[key], "name")) for key in ("first", "second")]
    return f"Got both inputs: {', '.join(names)}."


async def _ask_user_name(ctx: PreflightContext) -> dict[str, Any]:
    """Preflight of `test_tool_with_task`: the name, asked before the task exists."""
    answer = await ctx.elicit("What is your name?", NAME_SCHEMA, key="user_name")
    return {"name": _field(answer, "name"), "action": answer.action}


@tool(task_support="required", preflight=_ask_user_name)
async def test_tool_with_task(ctx: TaskContext) -> str:
    """Ask for a name before the task exists (MRTR), then greet it from the task."""
    name = ctx.preflight.get("name")
    if name is None:
        raise ToolError(f"No name given ({ctx.preflight.get('action')})")
    return f"Hello, {name}! (from a task)"


# ---------------------------------------------- multi-round-trip (SEP-2322) tools


@tool(task_support="forbidden")
async def test_input_required_result_elicitation(ctx: TaskContext) -> str:
    """Ask for a name (elicitation, key ``user_name``), then greet it."""
    answer = await ctx.elicit("What is your name?", NAME_SCHEMA, key="user_name")
    if not answer.accepted:
        return f"No name given ({answer.action})."
    return f"Hello, {_field(answer, 'name')}!"


@tool(task_support="forbidden")
async def test_input_required_result_sampling(ctx: TaskContext) -> str:
    """Ask the client's model a question (sampling), then return its answer."""
    answer = await ctx.sample(
        "What is the capital of France?", max_tokens=100, key="capital_question"
    )
    return f"The model said: {answer.text}"


@tool(task_support="forbidden")
async def test_input_required_result_list_roots(ctx: TaskContext) -> str:
    """Ask the client for its roots, then list them."""
    answer = await ctx.list_roots(key="client_roots")
    uris = _root_uris(answer)
    return f"Client roots: {', '.join(uris) or '(none)'}."


@tool(task_support="forbidden")
async def test_input_required_result_request_state(ctx: TaskContext) -> str:
    """Ask for a confirmation; the answer travels with the echoed requestState."""
    answer = await ctx.elicit("Please confirm", OK_SCHEMA, key="confirm")
    return f"state-ok: action={answer.action}, content={_content_json(answer.content)}"


@tool(task_support="forbidden")
async def test_input_required_result_multiple_inputs(ctx: TaskContext) -> str:
    """Ask an elicitation, a sampling and a roots/list question at once."""
    answers = await ctx.ask(
        {
            "user_name": Question.form("What is your name?", NAME_SCHEMA),
            "greeting": Question.sampling("Generate a greeting", max_tokens=50),
            "client_roots": Question.roots(),
        }
    )
    name = _field(answers["user_name"], "name")
    roots = _root_uris(answers["client_roots"])
    return f"name={name}, greeting={answers['greeting'].text}, roots={len(roots)}"


@tool(task_support="forbidden")
async def test_input_required_result_multi_round(ctx: TaskContext) -> str:
    """Ask for a name, then (next round) for a favourite colour."""
    step1 = await ctx.elicit("Step 1: What is your name?", NAME_SCHEMA, key="step1")
    step2 = await ctx.elicit(
        "Step 2: What is your favorite color?",
        {
            "type": "object",
            "properties": {"color": {"type": "string"}},
            "required": ["color"],
        },
        key="step2",
    )
    name = _field(step1, "name")
    color = _field(step2, "color")
    return f"{name} likes {color}."


@tool(task_support="forbidden")
async def test_input_required_result_tampered_state(ctx: TaskContext) -> str:
    """Ask for a confirmation; the server seals the requestState (tamper-evident)."""
    answer = await ctx.elicit("Please confirm", OK_SCHEMA, key="confirm")
    return f"Confirmed: {answer.action}."


@tool(task_support="forbidden")
async def test_input_required_result_capabilities(ctx: TaskContext) -> str:
    """Ask only what the caller declared it can answer (sampling, elicitation, roots)."""
    declared = ctx.client_capabilities
    questions: dict[str, Question] = {}
    if "sampling" in declared:
        questions["capability_sampling"] = Question.sampling("Say hello", max_tokens=20)
    if "elicitation" in declared:
        questions["capability_elicitation"] = Question.form(
            "What is your name?", NAME_SCHEMA
        )
    if "roots" in declared:
        questions["capability_roots"] = Question.roots()
    if not questions:
        return "The client declared no capability this tool could use."
    answers = await ctx.ask(questions)
    return f"Answered: {', '.join(sorted(answers))}."


# ------------------------------------------------------- core content tools


@tool(task_support="forbidden")
async def test_simple_text() -> str:
    """Return a fixed text."""
    return "This is a simple text response for testing."


@tool(task_support="forbidden")
async def test_image_content() -> ToolResult:
    """Return a 1x1 PNG image."""
    return ToolResult([{"type": "image", "data": PNG_BASE64, "mimeType": "image/png"}])


@tool(task_support="forbidden")
async def test_audio_content() -> ToolResult:
    """Return a short WAV clip."""
    return ToolResult([{"type": "audio", "data": WAV_BASE64, "mimeType": "audio/wav"}])


@tool(task_support="forbidden")
async def test_embedded_resource() -> ToolResult:
    """Return an embedded text resource."""
    return ToolResult(
        [
            {
                "type": "resource",
                "resource": {
                    "uri": "test://embedded-resource",
                    "mimeType": "text/plain",
                    "text": "This is an embedded resource content.",
                },
            }
        ]
    )


@tool(task_support="forbidden")
async def test_multiple_content_types() -> ToolResult:
    """Return text, an image and an embedded resource together."""
    return ToolResult(
        [
            {"type": "text", "text": "Multiple content types test:"},
            {"type": "image", "data": PNG_BASE64, "mimeType": "image/png"},
            {
                "type": "resource",
                "resource": {
                    "uri": "test://mixed-content-resource",
                    "mimeType": "application/json",
                    "text": '{"test":"data","value":123}',
                },
            },
        ]
    )


@tool(task_support="forbidden")
async def test_error_handling() -> str:
    """Always end with a tool execution error (isError)."""
    raise ToolError("This tool intentionally returns an error for testing")


@tool(task_support="forbidden")
async def test_tool_with_progress(ctx: TaskContext) -> str:
    """Report progress 0, 50 and 100 of 100, about 50 ms apart."""
    await ctx.report_progress(0, 100)
    await _take(0.05)
    await ctx.report_progress(50, 100)
    await _take(0.05)
    await ctx.report_progress(100, 100)
    return "Progress test completed."


@tool(task_support="forbidden")
async def test_tool_with_logging(ctx: TaskContext) -> str:
    """Send three info log messages about 50 ms apart."""
    await ctx.log("info", "Tool execution started")
    await _take(0.05)
    await ctx.log("info", "Tool processing data")
    await _take(0.05)
    await ctx.log("info", "Tool execution completed")
    return "Logging test completed."


@tool(task_support="forbidden")
async def test_sampling(ctx: TaskContext, prompt: str) -> str:
    """Ask the client's model to answer ``prompt``."""
    answer = await ctx.sample(prompt, max_tokens=100, key="sampling")
    return f"LLM response: {answer.text}"


@tool(task_support="forbidden")
async def test_elicitation(ctx: TaskContext, message: str) -> str:
    """Ask the user for a username and an email address."""
    answer = await ctx.elicit(
        message,
        {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        },
        key="user_info",
    )
    return (
        f"User response: action={answer.action}, "
        f"content={_content_json(answer.content)}"
    )


@tool(task_support="forbidden")
async def test_elicitation_sep1034_defaults(ctx: TaskContext) -> str:
    """Ask a form whose fields all have defaults (SEP-1034)."""
    answer = await ctx.elicit(
        "Please review and update the form fields with defaults",
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "default": "John Doe"},
                "age": {"type": "integer", "default": 30},
                "score": {"type": "number", "default": 95.5},
                "status": {
                    "type": "string",
                    "enum": ["active", "inactive", "pending"],
                    "default": "active",
                },
                "verified": {"type": "boolean", "default": True},
            },
        },
        key="defaults",
    )
    return (
        f"Elicitation completed: action={answer.action}, "
        f"content={_content_json(answer.content)}"
    )


@tool(task_support="forbidden")
async def test_elicitation_sep1330_enums(ctx: TaskContext) -> str:
    """Ask a form with the five enum variants of SEP-1330."""
    answer = await ctx.elicit(
        "Please select options from the enum fields",
        {
            "type": "object",
            "properties": {
                "untitledSingle": {
                    "type": "string",
                    "enum": ["option1", "option2", "option3"],
                },
                "titledSingle": {
                    "type": "string",
                    "oneOf": [
                        {"const": "value1", "title": "First Option"},
                        {"const": "value2", "title": "Second Option"},
                        {"const": "value3", "title": "Third Option"},
                    ],
                },
                "legacyEnum": {
                    "type": "string",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"],
                },
                "untitledMulti": {
                    "type": "array",
                    "items": {
                        "type": "string",
                        "enum": ["option1", "option2", "option3"],
                    },
                },
                "titledMulti": {
                    "type": "array",
                    "items": {
                        "anyOf": [
                            {"const": "value1", "title": "First Choice"},
                            {"const": "value2", "title": "Second Choice"},
                            {"const": "value3", "title": "Third Choice"},
                        ]
                    },
                },
            },
        },
        key="enums",
    )
    return (
        f"Elicitation completed: action={answer.action}, "
        f"content={_content_json(answer.content)}"
    )


@tool(task_support="forbidden", input_schema=JSON_SCHEMA_2020_12)
async def json_schema_2020_12_tool(**arguments: Any) -> str:
    """Tool with JSON Schema 2020-12 features."""
    return f"Received: {_content_json(arguments)}"


# ------------------------------------------------ 2026-07-28 (stateless) tools


@tool(task_support="forbidden")
async def test_missing_capability(ctx: TaskContext) -> str:
    """Needs the client's sampling capability: -32021 naming it when undeclared."""
    if "sampling" in ctx.client_capabilities:
        return "Success"
    # Asking without the capability raises InputNotSupportedError, which the
    # server turns into -32021 with requiredCapabilities {"sampling": {}}.
    await ctx.sample("Capability probe", max_tokens=10, key="capability_probe")
    raise InputNotSupportedError("sampling")  # not reached


@tool(task_support="forbidden")
async def test_streaming_elicitation(ctx: TaskContext) -> str:
    """Ask for a name (elicitation) and greet it; never a server-to-client request."""
    answer = await ctx.elicit("What is your name?", NAME_SCHEMA, key="stream_name")
    if not answer.accepted:
        return f"No name given ({answer.action})."
    return f"Hello, {_field(answer, 'name')}!"


@tool(task_support="forbidden")
async def test_logging_tool(ctx: TaskContext) -> str:
    """Log one info message; the server forwards it only if the request set a log level."""
    await ctx.log("info", "test_logging_tool ran")
    return "Logged one message."


@tool(task_support="forbidden")
async def test_custom_headers(
    region: Annotated[
        str, pydantic.Field(json_schema_extra={"x-mcp-header": "Region"})
    ],
) -> str:
    """Echo ``region``, which clients mirror in the ``Mcp-Param-Region`` header."""
    return f"Region: {region}"
