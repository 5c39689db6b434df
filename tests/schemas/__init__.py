"""Check messages against the published 2026-07-28 schemas (sources in README.md).

`check` validates an instance against one definition of the core schema
(``"core"``) or of the tasks extension's (``"ext"``); the helpers below it
apply the checks a ``tasks/get`` result and a ``notifications/tasks`` frame
must pass.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

HERE: Final = Path(__file__).parent
_FILES: Final = {
    "core": ("mcp-2026-07-28.schema.json", "urn:mcp:schema:2026-07-28"),
    "ext": ("ext-tasks-draft.schema.json", "urn:mcp:ext-tasks:draft"),
}

Schema = Literal["core", "ext"]


@cache
def _registry() -> Registry[Any]:
    registry: Registry[Any] = Registry()
    for name, uri in _FILES.values():
        contents = json.loads((HERE / name).read_text())
        contents.pop("$id", None)  # addressed by our own URI below
        resource = Resource.from_contents(contents, default_specification=DRAFT202012)
        registry = registry.with_resource(uri, resource)
    return registry


def problems(schema: Schema, definition: str, instance: Any) -> list[str]:
    """Every way ``instance`` breaks ``definition`` of ``schema`` (empty: valid)."""
    uri = _FILES[schema][1]
    validator = Draft202012Validator(
        {"$ref": f"{uri}#/$defs/{definition}"}, registry=_registry()
    )
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(instance)  # pyright: ignore[reportUnknownMemberType]
    ]


def check(schema: Schema, definition: str, instance: Any) -> None:
    """Fail the test when ``instance`` is not a valid ``definition``."""
    found = problems(schema, definition, instance)
    assert not found, f"not a valid {schema} {definition}: {found}"


def _check_inlined(task: dict[str, Any]) -> None:
    # The extension types ``result`` as any object; it is the call's result,
    # which the core schema requires to carry resultType (the strict client of
    # ext-tasks expects "complete" exactly).
    if task.get("status") == "completed":
        check("core", "CallToolResult", task["result"])
        assert task["result"]["resultType"] == "complete", task["result"]
    if task.get("status") == "failed":
        check("core", "Error", task["error"])


def check_get_task_result(result: dict[str, Any]) -> None:
    """A whole ``tasks/get`` result: ``GetTaskResult``, with its inlined result."""
    check("ext", "GetTaskResult", result)
    assert result["resultType"] == "complete"
    _check_inlined(result)


def check_task_notification(notification: dict[str, Any]) -> None:
    """A ``notifications/tasks`` frame as `TaskClient` records it (method, params)."""
    message = {"jsonrpc": "2.0", **notification}
    check("ext", "TaskStatusNotification", message)
    check("ext", "TaskStatusNotificationParams", notification["params"])
    _check_inlined(notification["params"])
