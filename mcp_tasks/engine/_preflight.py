"""Preflight: questions a tool asks *before* its task is created.

A tool may declare ``preflight=fn``. Before the task exists, ``fn(ctx,
**arguments)`` runs on the request itself and may ask questions; on the
2026-07-28 wire they travel as multi-round-trip requests (``input_required``
results), on 2025-11-25 as server-to-client requests. Each round runs the
preflight again from the top with every answer so far, so it holds no state
between rounds; what it returns becomes `TaskContext.preflight` of the task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic

from mcp_tasks._questions import (
    Answer,
    InputNotSupportedError,
    Question,
    check_response,
    to_answer,
)
from mcp_tasks._toolapi import ToolSpec


class NeedInput(Exception):
    """Raised by a preflight question that has no answer yet."""

    def __init__(self, questions: dict[str, Question]) -> None:
        self.questions = questions
        super().__init__(", ".join(questions))


@dataclass(eq=False)
class PreflightContext:
    """What a preflight function gets as ``ctx``: questions answered from the request."""

    answers: Mapping[str, Any]
    client_capabilities: Mapping[str, Any]
    _counters: dict[str, int] = field(default_factory=lambda: dict[str, int]())

    def _next_key(self, kind: str) -> str:
        count = self._counters.get(kind, 0) + 1
        self._counters[kind] = count
        return f"{kind}-{count}"

    async def ask(self, questions: Mapping[str, Question]) -> dict[str, Answer]:
        """Answers for every question, or `NeedInput` naming the unanswered ones."""
        answers: dict[str, Answer] = {}
        missing: dict[str, Question] = {}
        for key, question in questions.items():
            given = self.answers.get(key)
            if (
                given is not None
                and check_response(question.method, question.params, given) is None
            ):
                answers[key] = to_answer(question, given)
            else:
                if question.capability not in self.client_capabilities:
                    raise InputNotSupportedError(question.capability)
                missing[key] = question
        if missing:
            raise NeedInput(missing)
        return answers

    async def elicit(
        self,
        message: str,
        schema: type[pydantic.BaseModel] | Mapping[str, Any],
        *,
        key: str | None = None,
    ) -> Answer:
        """Ask the user to fill in a form before the task starts."""
        key = key or self._next_key("elicit")
        return (await self.ask({key: Question.form(message, schema)}))[key]

    async def sample(
        self,
        messages: str | list[dict[str, Any]],
        *,
        max_tokens: int,
        key: str | None = None,
    ) -> Answer:
        """Ask the client's model before the task starts."""
        key = key or self._next_key("sample")
        return (
            await self.ask({key: Question.sampling(messages, max_tokens=max_tokens)})
        )[key]


@dataclass(frozen=True, slots=True)
class PreflightResult:
    """Either what the preflight gathered, or the questions it still needs."""

    gathered: dict[str, Any] | None = None
    questions: dict[str, Question] | None = None


async def run_preflight(
    spec: ToolSpec,
    arguments: Mapping[str, Any],
    answers: Mapping[str, Any],
    client_capabilities: Mapping[str, Any],
) -> PreflightResult:
    """Run ``spec``'s preflight with the answers so far.

    Raises whatever the preflight raises (`InputNotSupportedError` included),
    except `NeedInput`, which becomes the result's ``questions``.
    """
    if spec.preflight is None:
        return PreflightResult(gathered={})
    ctx = PreflightContext(answers, client_capabilities)
    try:
        gathered = await spec.preflight(ctx, **spec.validate(arguments))
    except NeedInput as need:
        return PreflightResult(questions=need.questions)
    return PreflightResult(gathered=dict(gathered or {}))
