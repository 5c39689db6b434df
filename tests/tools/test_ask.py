"""The ``ask`` tool: the question it puts, and what each kind of reply returns.

End-to-end delivery over both wires is covered by
``tests/e2e/test_human_in_the_loop.py``; here a fake context answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from mcp_tasks import Answer, ToolError

from .support import load_tool


class AnsweringContext:
    """Records each ``elicit`` call and replies with a fixed `Answer`."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.asked: list[tuple[str, Mapping[str, Any]]] = []

    async def elicit(
        self,
        message: str,
        schema: Mapping[str, Any],
        *,
        key: str | None = None,
        timeout_seconds: float | None = None,
    ) -> Answer:
        self.asked.append((message, schema))
        return self.answer


async def test_free_text_question_returns_the_answer() -> None:
    ctx = AnsweringContext(Answer("accept", {"answer": "Ada"}))
    assert await load_tool("ask").fn(ctx, question="Your name?") == "Ada"
    [(message, schema)] = ctx.asked
    assert message == "Your name?"
    assert schema == {
        "type": "object",
        "properties": {"answer": {"type": "string", "title": "Answer"}},
        "required": ["answer"],
    }


async def test_choices_become_an_enum() -> None:
    ctx = AnsweringContext(Answer("accept", {"answer": "no"}))
    text = await load_tool("ask").fn(ctx, question="Ship?", choices=["yes", "no"])
    assert text == "no"
    [(_, schema)] = ctx.asked
    assert schema["properties"]["answer"]["enum"] == ["yes", "no"]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("decline", "The user declined to answer."),
        ("cancel", "The user cancelled the question without answering."),
        ("timeout", "The user did not answer in time."),
    ],
)
async def test_no_answer_is_reported_as_text(action: Any, expected: str) -> None:
    ctx = AnsweringContext(Answer(action))
    assert await load_tool("ask").fn(ctx, question="Email?") == expected


@pytest.mark.parametrize(
    ("question", "choices", "problem"),
    [
        ("  ", None, "question must not be empty"),
        ("Pick", [], "choices must list between 1 and 50 options"),
        ("Pick", ["a", "a"], "choices must not repeat an option"),
    ],
)
async def test_bad_arguments_are_tool_errors(
    question: str, choices: list[str] | None, problem: str
) -> None:
    ctx = AnsweringContext(Answer("accept", {"answer": "x"}))
    with pytest.raises(ToolError, match=problem):
        await load_tool("ask").fn(ctx, question=question, choices=choices)
    assert ctx.asked == []
