"""A tool's input schema: derived once, shared read-only, copied for callers.

Every 2026-07-28 task-augmented ``tools/call`` checks its ``Mcp-Param-*``
headers against the tool's schema; deriving it from the arguments model costs
pydantic about 100 µs, which profiles showed as more than the rest of the
call's direct answer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pydantic

from mcp_tasks import tool
from mcp_tasks._toolapi import ToolSpec, spec_of


class CountingArguments(pydantic.BaseModel):
    """An arguments model that counts how often its JSON schema is built."""

    text: str
    built: ClassVar[int] = 0

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        CountingArguments.built += 1
        return super().model_json_schema(*args, **kwargs)


def spec(fn: object) -> ToolSpec:
    found = spec_of(fn)
    assert found is not None
    return found


@tool
async def echo(text: str) -> str:
    """Say it back."""
    return text


def test_the_derived_schema_is_built_once_and_callers_get_copies() -> None:
    echo_spec = dataclasses.replace(spec(echo), arguments_model=CountingArguments)
    CountingArguments.built = 0

    shared = echo_spec.shared_input_schema
    for _ in range(5):
        assert echo_spec.shared_input_schema is shared
    assert CountingArguments.built == 1
    assert shared["properties"]["text"]["type"] == "string"
    assert "title" not in shared

    copy = echo_spec.input_schema
    copy["properties"]["text"]["type"] = "integer"
    copy["required"].append("other")
    assert echo_spec.input_schema == shared
    assert shared["properties"]["text"]["type"] == "string"
    assert shared["required"] == ["text"]
    assert CountingArguments.built == 1


def test_an_explicit_schema_is_used_verbatim_and_copied_deeply() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
    }

    @tool(input_schema=schema)
    async def count(n: int) -> int:
        return n

    count_spec = spec(count)
    assert count_spec.shared_input_schema == schema
    copy = count_spec.input_schema
    copy["properties"]["n"]["type"] = "string"
    assert schema["properties"]["n"]["type"] == "integer"
    assert count_spec.input_schema == schema
