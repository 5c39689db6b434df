"""Multi-round-trip requests (2026-07-28, SEP-2322) over the engine.

On the modern wire a server may not send requests to the client. A call that
needs input answers ``resultType: "input_required"`` with ``inputRequests``
and a sealed ``requestState``; the client retries the same call with
``inputResponses`` and the state echoed back.

Two uses here:
- a synchronous call whose tool asks a question: the call runs as an unlisted
  engine task; ``requestState`` names that task (sealed, bound to the
  requestor, expiring), so each round answers the task's open questions and
  waits for it to end or ask again;
- a tool's preflight, before a task is created: stateless, ``requestState``
  carries the answers gathered so far.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError

from mcp_tasks._exceptions import (
    InvalidArgumentsError,
    McpTasksError,
    TaskNotFoundError,
    TaskTerminalError,
)
from mcp_tasks._model import InputRequest, TaskStatus, new_task_id
from mcp_tasks._questions import InvalidAnswerError, Question
from mcp_tasks._toolapi import ToolSpec
from mcp_tasks.binding._common import INVALID_PARAMS, rpc_error
from mcp_tasks.engine import Requester, TaskRuntime, run_preflight


def raw_input_responses(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
    """The call's ``inputResponses`` exactly as sent (unknown shapes included)."""
    raw = (ctx.params or {}).get("inputResponses")
    return dict(raw) if isinstance(raw, Mapping) else {}  # pyright: ignore[reportUnknownArgumentType]


def raw_request_state(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The call's echoed ``requestState``, if any."""
    state = (ctx.params or {}).get("requestState")
    return state if isinstance(state, str) else None


def client_capabilities(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
    """This request's declared client capabilities as MCP JSON."""
    return capabilities_json(ctx.session.client_capabilities)


def capabilities_json(capabilities: types.ClientCapabilities | None) -> dict[str, Any]:
    """Declared client capabilities as MCP JSON (``{}`` when none were declared)."""
    if capabilities is None:
        return {}
    return capabilities.model_dump(by_alias=True, mode="json", exclude_none=True)


def bad_state() -> MCPError:
    """-32602 for a ``requestState`` this server did not issue to this client."""
    return MCPError(
        INVALID_PARAMS,
        "Invalid params: requestState: not issued by this server for this client, "
        "altered, or expired; start the call again without it",
        {"field": "requestState"},
    )


def input_required(
    requests: Mapping[str, tuple[str, dict[str, Any]]], state: str
) -> dict[str, Any]:
    """An ``InputRequiredResult``: the questions (key → method, params) and the state."""
    return {
        "resultType": "input_required",
        "inputRequests": {
            key: {"method": method, "params": params}
            for key, (method, params) in requests.items()
        },
        "requestState": state,
    }


def _from_questions(
    questions: Mapping[str, Question],
) -> dict[str, tuple[str, dict[str, Any]]]:
    return {key: (q.method, q.params) for key, q in questions.items()}


def _from_requests(
    requests: list[InputRequest],
) -> dict[str, tuple[str, dict[str, Any]]]:
    return {r.key: (r.method, r.params) for r in requests}


class Mrtr:
    """Runs synchronous calls and preflights over multi-round-trip requests."""

    def __init__(self, runtime: TaskRuntime) -> None:
        self._runtime = runtime

    @property
    def _ttl(self) -> float:
        return self._runtime.settings.mrtr_timeout_seconds

    async def preflight(
        self,
        ctx: ServerRequestContext[Any, Any],
        requester: Requester,
        spec: ToolSpec,
        arguments: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Run the tool's preflight; return what it gathered, or raise `_Ask`."""
        answers: dict[str, Any] = {}
        state = raw_request_state(ctx)
        if state is not None:
            payload = self._runtime.unseal(requester.owner_id, state)
            if payload is None or payload.get("tool") != spec.name:
                raise bad_state()
            answers.update(payload.get("answers") or {})
        answers.update(raw_input_responses(ctx))
        try:
            result = await run_preflight(
                spec, arguments, answers, client_capabilities(ctx)
            )
        except InvalidArgumentsError:
            raise  # the caller answers with a tool error naming the fields
        except McpTasksError as exc:
            raise rpc_error(exc) from None
        if result.questions is not None:
            # Keep only answers that fit, so the state never carries junk.
            sealed = self._runtime.seal(
                requester.owner_id, {"tool": spec.name, "answers": answers}, self._ttl
            )
            raise AskClient(input_required(_from_questions(result.questions), sealed))
        return result.gathered or {}

    async def call(
        self,
        ctx: ServerRequestContext[Any, Any],
        requester: Requester,
        spec: ToolSpec,
        arguments: Mapping[str, Any],
        request_meta: dict[str, Any],
        watch: Callable[[str], None],
    ) -> str | dict[str, Any]:
        """One round of a synchronous call: the ended task's id, or an input-required result.

        ``watch`` is told the id of the task running the call before it can run.
        """
        runtime = self._runtime
        state = raw_request_state(ctx)
        responses = raw_input_responses(ctx)
        if state is not None:
            payload = runtime.unseal(requester.owner_id, state)
            if payload is None or not isinstance(payload.get("task"), str):
                raise bad_state()
            task_id: str = payload["task"]
            watch(task_id)
            await self._answer_each(requester, task_id, responses)
        else:
            request_meta = {
                **request_meta,
                "inputResponses": responses,
                "questionTimeoutSeconds": self._ttl,
            }
            task_id = new_task_id()
            watch(task_id)
            await runtime.submit(
                requester,
                spec.name,
                arguments,
                request_meta=request_meta,
                listed=False,
                task_id=task_id,
            )
        async with runtime.cancel_on_exit(requester, task_id):
            try:
                task = await runtime.wait_settled(requester, task_id)
            except TaskNotFoundError:
                raise bad_state() from None
        if task.status is not TaskStatus.INPUT_REQUIRED:
            return task_id
        open_requests = await runtime.input_requests(requester, task_id)
        sealed = runtime.seal(requester.owner_id, {"task": task_id}, self._ttl)
        return input_required(_from_requests(open_requests), sealed)

    async def _answer_each(
        self, requester: Requester, task_id: str, responses: Mapping[str, Any]
    ) -> None:
        # Each answer on its own: one that does not fit is left out (its question
        # is asked again) without dropping the others.
        for key, response in responses.items():
            try:
                await self._runtime.answer(requester, task_id, {key: response})
            except InvalidAnswerError:
                continue
            except TaskTerminalError:
                return
            except TaskNotFoundError:
                raise bad_state() from None


class AskClient(Exception):
    """Carries an ``input_required`` result out of a preflight."""

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        super().__init__("input required")


__all__ = ["AskClient", "Mrtr", "client_capabilities"]
