"""Tools the human-in-the-loop end-to-end tests serve next to ``tools/ask.py``.

Loaded by the server under test with ``--tools``, by path, like any tool module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcp_tasks import Question, TaskContext, ThreadTaskContext, tool

APPROVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"approve": {"type": "boolean"}},
    "required": ["approve"],
}
NAME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1}},
    "required": ["name"],
}
COLOUR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
    "required": ["colour"],
}


@tool(task_support="optional")
async def echo(text: str) -> str:
    """Return ``text`` at once (the quick work that must keep flowing)."""
    return text


@tool(task_support="optional")
async def two_questions(ctx: TaskContext) -> str:
    """Ask for a name and a colour at once; both must be answered."""
    answers = await ctx.ask(
        {
            "name": Question.form("What is your name?", NAME_SCHEMA),
            "colour": Question.form("Which colour?", COLOUR_SCHEMA),
        }
    )
    name, colour = answers["name"], answers["colour"]
    if not (name.accepted and colour.accepted):
        return f"name: {name.action}, colour: {colour.action}"
    return f"{name.content['name']} likes {colour.content['colour']}"


@tool(task_support="optional")
async def counted_ask(ctx: TaskContext, counter_file: str) -> str:
    """Run a step that appends a line to ``counter_file``, then ask for approval.

    The file shows how often the step's body really ran.
    """

    def prepare() -> int:
        path = Path(counter_file)
        with path.open("a", encoding="utf-8") as handle:
            handle.write("prepared\n")
        return len(path.read_text(encoding="utf-8").splitlines())

    prepared = await ctx.step("prepare", prepare)
    reply = await ctx.elicit("Proceed with the prepared work?", APPROVE_SCHEMA)
    approved = reply.accepted and bool(reply.content["approve"])
    return f"prepared #{prepared}; approved: {approved}"


@tool(task_support="optional")
async def timed_ask(ctx: TaskContext, seconds: float) -> str:
    """Ask a question that expires after ``seconds``; report what happened."""
    reply = await ctx.elicit(
        "Answer quickly, please", APPROVE_SCHEMA, timeout_seconds=seconds
    )
    return f"action: {reply.action}"


@tool(task_support="forbidden")
async def confirm_now(ctx: TaskContext, what: str) -> str:
    """Ask to confirm ``what`` within the call itself (never a task)."""
    reply = await ctx.elicit(f"Confirm {what}?", APPROVE_SCHEMA)
    approved = reply.accepted and bool(reply.content["approve"])
    return f"{what}: {'confirmed' if approved else 'not confirmed'}"


@tool(task_support="forbidden")
def confirm_threaded(ctx: ThreadTaskContext, what: str) -> str:
    """Like ``confirm_now``, but a plain ``def`` body running in a thread."""
    reply = ctx.elicit(f"Confirm {what}?", APPROVE_SCHEMA)
    approved = reply.accepted and bool(reply.content["approve"])
    return f"{what}: {'confirmed' if approved else 'not confirmed'}"
