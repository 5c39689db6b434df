"""The ``ask`` tool: puts a question to the user and returns the answer."""

from __future__ import annotations

from typing import Any

from mcp_tasks import TaskContext, ToolError, tool

MAX_CHOICES = 50

#: What the tool returns when the user gives no answer, by elicitation action.
NO_ANSWER = {
    "decline": "The user declined to answer.",
    "cancel": "The user cancelled the question without answering.",
    "timeout": "The user did not answer in time.",
}


@tool(task_support="optional")
async def ask(ctx: TaskContext, question: str, choices: list[str] | None = None) -> str:
    """Ask the user ``question`` and return their answer as text.

    With ``choices`` the user picks one of them; without, they type a free
    answer. While the user thinks, a task waits ``input_required`` and holds no
    worker. If the user declines, cancels or does not answer in time, the
    result says so (it is not an error).
    """
    if not question.strip():
        raise ToolError("question must not be empty")
    answer_field: dict[str, Any] = {"type": "string", "title": "Answer"}
    if choices is not None:
        if not 0 < len(choices) <= MAX_CHOICES:
            raise ToolError(f"choices must list between 1 and {MAX_CHOICES} options")
        if len(set(choices)) != len(choices):
            raise ToolError("choices must not repeat an option")
        answer_field["enum"] = list(choices)
    schema = {
        "type": "object",
        "properties": {"answer": answer_field},
        "required": ["answer"],
    }
    reply = await ctx.elicit(question, schema)
    if not reply.accepted:
        return NO_ANSWER[reply.action]
    return str(reply.content["answer"])
