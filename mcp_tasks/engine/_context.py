"""The `TaskContext` a running tool body gets, and how it suspends.

Durable execution is end-and-reenter: a task that must wait (for an answer,
for a retry time, for budget) records why in the journal and *ends its run*
by raising `TaskSuspended`, releasing its worker. When it may continue, the
runtime runs the body again from the top. Everything the body did through the
context is replayed from the journal: recorded steps return their results
without running again, answered questions return their answers. So a waiting
task costs journal rows, not a coroutine or a thread.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import anyio.to_thread
import pydantic

from mcp_tasks._model import InputRequest, OwnerId, TaskId
from mcp_tasks._questions import (
    Answer,
    InputNotSupportedError,
    Question,
    check_response,
    to_answer,
)
from mcp_tasks.engine._engine import Engine
from mcp_tasks.engine._runs import Run


class TaskSuspended(BaseException):
    """Ends a run that will continue later; not an error.

    A `BaseException` so that a tool's ``except Exception`` cannot swallow it.
    ``hand_back`` is True when nothing was recorded and the runner must give the
    task back (shutdown stopped it at a step boundary).
    """

    def __init__(self, why: str, *, hand_back: bool = False) -> None:
        self.why = why
        self.hand_back = hand_back
        super().__init__(why)


@dataclass(eq=False)
class RunContext:
    """The context of one run of one task. Implements `TaskContext`."""

    engine: Engine
    run: Run
    config: Mapping[str, Any]
    request_meta: Mapping[str, Any]
    recorded_steps: dict[str, Any] = field(default_factory=lambda: dict[str, Any]())
    recorded_questions: dict[str, InputRequest] = field(
        default_factory=lambda: dict[str, InputRequest]()
    )
    _counters: dict[str, int] = field(default_factory=lambda: dict[str, int]())

    @property
    def task_id(self) -> TaskId:
        return self.run.task_id

    @property
    def owner_id(self) -> OwnerId:
        return self.run.owner_id

    @property
    def attempt(self) -> int:
        return self.run.lease.attempt

    @property
    def client_capabilities(self) -> Mapping[str, Any]:
        caps = self.request_meta.get("clientCapabilities")
        return cast("Mapping[str, Any]", caps) if isinstance(caps, Mapping) else {}

    @property
    def preflight(self) -> Mapping[str, Any]:
        gathered = self.request_meta.get("preflight")
        return (
            cast("Mapping[str, Any]", gathered) if isinstance(gathered, Mapping) else {}
        )

    def _next_key(self, kind: str) -> str:
        count = self._counters.get(kind, 0) + 1
        self._counters[kind] = count
        return f"{kind}-{count}"

    async def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        self.engine.report(self.run, message=message, progress=progress, total=total)

    async def set_status(self, message: str) -> None:
        self.engine.report(self.run, message=message)

    async def log(self, level: str, message: str) -> None:
        await self.engine.log(self.run, level, message)

    # ------------------------------------------------------------------ steps

    async def step(
        self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        key = self._next_key(f"step:{name}")
        if key in self.recorded_steps:
            return self.recorded_steps[key]
        if self.engine.draining:
            # Shutting down: let running steps finish, start no new one.
            raise TaskSuspended("server shutting down", hand_back=True)
        if inspect.iscoroutinefunction(fn):
            result = await fn(*args, **kwargs)
        else:
            result = await anyio.to_thread.run_sync(
                functools.partial(fn, *args, **kwargs)
            )
        try:
            # Round-trip through JSON so a first run sees exactly what a replay will.
            result = json.loads(json.dumps(result))
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"step {name!r} returned a value that is not JSON: {exc}"
            ) from exc
        await self.engine.record_step(self.run, key, result)
        self.recorded_steps[key] = result
        return result

    async def acquire(
        self, budget: str, *, requests: float = 1, tokens: float = 0
    ) -> None:
        key = self._next_key(f"budget:{budget}")
        if key in self.recorded_steps:
            return
        wait = await self.engine.take_budget(budget, requests, tokens)
        if wait > 0:
            await self.engine.park(
                self.run, self.engine.now() + wait, budget_message(budget, wait)
            )
            raise TaskSuspended(f"waiting for budget {budget!r}")
        await self.engine.record_step(
            self.run, key, {"requests": requests, "tokens": tokens}
        )
        self.recorded_steps[key] = True

    # -------------------------------------------------------------- questions

    async def ask(self, questions: Mapping[str, Question]) -> dict[str, Answer]:
        answers: dict[str, Answer] = {}
        pending: list[tuple[str, Question]] = []
        raw = self.request_meta.get("inputResponses")
        preloaded: Mapping[str, Any] = (
            cast("Mapping[str, Any]", raw) if isinstance(raw, Mapping) else {}
        )
        for key, question in questions.items():
            recorded = self.recorded_questions.get(key)
            if recorded is not None and recorded.response is not None:
                answers[key] = to_answer(question, recorded.response)
                continue
            given = preloaded.get(key)
            if (
                given is not None
                and check_response(question.method, question.params, given) is None
            ):
                answers[key] = to_answer(question, given)
                continue
            pending.append((key, question))
        if not pending:
            return answers
        for _, question in pending:
            if question.capability not in self.client_capabilities:
                raise InputNotSupportedError(question.capability)
        now = self.engine.now()
        timeout = self.request_meta.get("questionTimeoutSeconds")
        requests = [
            InputRequest(
                key=key,
                method=question.method,
                params=question.params,
                expires_at=_deadline(now, question.timeout_seconds, timeout),
            )
            for key, question in pending
        ]
        await self.engine.ask(self.run, requests, pending[0][1].summary)
        raise TaskSuspended("waiting for input")

    async def elicit(
        self,
        message: str,
        schema: type[pydantic.BaseModel] | Mapping[str, Any],
        *,
        key: str | None = None,
        timeout_seconds: float | None = None,
    ) -> Answer:
        key = key or self._next_key("elicit")
        question = Question.form(message, schema, timeout_seconds=timeout_seconds)
        return (await self.ask({key: question}))[key]

    async def elicit_url(
        self,
        message: str,
        url: str,
        *,
        key: str | None = None,
        timeout_seconds: float | None = None,
    ) -> Answer:
        key = key or self._next_key("elicit")
        recorded = self.recorded_questions.get(key)
        question = Question.url(message, url, timeout_seconds=timeout_seconds)
        if recorded is not None:
            # Keep the elicitation id the client already saw.
            question = Question(recorded.method, recorded.params, timeout_seconds)
        return (await self.ask({key: question}))[key]

    async def sample(
        self,
        messages: str | list[dict[str, Any]],
        *,
        max_tokens: int,
        key: str | None = None,
        system_prompt: str | None = None,
        temperature: float | None = None,
        timeout_seconds: float | None = None,
    ) -> Answer:
        key = key or self._next_key("sample")
        question = Question.sampling(
            messages,
            max_tokens=max_tokens,
            system_prompt=system_prompt,
            temperature=temperature,
            timeout_seconds=timeout_seconds,
        )
        return (await self.ask({key: question}))[key]

    async def list_roots(self, *, key: str | None = None) -> Answer:
        key = key or self._next_key("roots")
        return (await self.ask({key: Question.roots()}))[key]


def budget_message(name: str, seconds: float) -> str:
    """The status message of a task waiting for room in a budget."""
    return f"Waiting {seconds:.1f} s for room in budget {name!r}"


def _deadline(now: float, own: float | None, default: object) -> float | None:
    if own is not None:
        return now + own
    if isinstance(default, int | float) and not isinstance(default, bool):
        return now + float(default)
    return None
