"""Asking a task's open questions over server-to-client requests (2025-11-25).

On the handshake wire a question is an ordinary ``elicitation/create`` (or
``sampling/createMessage``, ``roots/list``) request from server to client. It
can ride an open request's stream (``tasks/result``, or the ``tools/call`` of
a synchronous call) or a session's standalone stream (a push to a client that
only polls ``tasks/get``). Every stream asks the same durable questions, but
one session holds at most one copy of each (`_copies.Copies`); the first valid
answer is recorded, and every other copy is then withdrawn.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.shared.message import ServerMessageMetadata
from pydantic import BaseModel

from mcp_tasks._exceptions import TaskNotFoundError, TaskTerminalError
from mcp_tasks._model import InputRequest, Task, TaskStatus
from mcp_tasks._questions import (
    CAPABILITY_OF,
    ELICIT,
    LIST_ROOTS,
    SAMPLE,
    InvalidAnswerError,
)
from mcp_tasks.binding._common import RELATED_TASK_META, connection_of, request_outbound
from mcp_tasks.binding._copies import MAX_ASKS_PER_CHANNEL, Channel, Copies, Copy
from mcp_tasks.engine import Requester, TaskRuntime

logger = logging.getLogger("mcp_tasks.binding.delivery")

Send = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""Sends one server-to-client request; returns the client's result."""

_MODELS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    ELICIT: (types.ElicitRequest, types.ElicitResult),
    SAMPLE: (types.CreateMessageRequest, types.CreateMessageResult),
    LIST_ROOTS: (types.ListRootsRequest, types.ListRootsResult),
}


def request_send(ctx: ServerRequestContext[Any, Any]) -> Send:
    """Send on the stream of the request behind ``ctx`` (preflight questions).

    Preflight questions come before any task exists: nothing durable to
    deduplicate or withdraw, so they go out as plain requests.
    """

    async def send(method: str, params: dict[str, Any]) -> dict[str, Any]:
        request_model, result_model = _MODELS[method]
        request = request_model.model_validate({"method": method, "params": params})
        result = await ctx.session.send_request(
            request,  # pyright: ignore[reportArgumentType]
            result_model,
            metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
        )
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)

    return send


def request_channel(ctx: ServerRequestContext[Any, Any], name: str) -> Channel:
    """The stream of the request behind ``ctx`` (its SSE stream on HTTP)."""
    return Channel(connection_of(ctx), request_outbound(ctx), name, standalone=False)


def standalone_channel(connection: Connection) -> Channel:
    """A session's standalone stream (the GET stream on HTTP)."""
    return Channel(connection, connection, "standalone stream", standalone=True)


def can_answer(capabilities: types.ClientCapabilities | None, method: str) -> bool:
    """Whether a client with ``capabilities`` can answer a ``method`` question."""
    if capabilities is None:
        return False
    return getattr(capabilities, CAPABILITY_OF[method], None) is not None


async def ask_open_questions(
    runtime: TaskRuntime,
    copies: Copies,
    requester: Requester,
    task_id: str,
    channel: Channel,
    *,
    related_task: bool,
    check_capabilities: bool = False,
) -> None:
    """Ask each open question of the task over ``channel``, all at once.

    Questions the session already holds on another stream (or that this
    stream asked often enough) are skipped: `Copies.claim` decides. With
    ``related_task`` the requests carry the related-task ``_meta`` (they belong
    to a task the client knows about).
    """
    capabilities = channel.connection.client_capabilities
    claimed: list[tuple[InputRequest, Copy]] = []
    with copies.reading(task_id):
        try:
            requests = await runtime.input_requests(requester, task_id)
        except TaskNotFoundError:
            return
        for request in requests:
            if check_capabilities and not can_answer(capabilities, request.method):
                continue
            copy = copies.claim(channel, task_id, request.key)
            if copy is not None:
                claimed.append((request, copy))
    async with anyio.create_task_group() as tg:
        for request, copy in claimed:
            tg.start_soon(_ask, runtime, copies, requester, request, copy, related_task)


async def _ask(
    runtime: TaskRuntime,
    copies: Copies,
    requester: Requester,
    request: InputRequest,
    copy: Copy,
    related_task: bool,
) -> None:
    task_id = copy.task_id
    problem: str | None = None
    try:
        for _ in range(MAX_ASKS_PER_CHANNEL):
            params = dict(request.params)
            if related_task:
                params["_meta"] = {RELATED_TASK_META: {"taskId": task_id}}
            if problem is not None and request.method == ELICIT:
                params["message"] = (
                    f"{params.get('message', '')} (previous answer refused: {problem})"
                )
            try:
                response = await _exchange(copies, copy, request.method, params)
            except Exception as exc:  # the client refused or vanished: not our failure
                logger.debug(
                    "question %s of %s not answered here: %r", request.key, task_id, exc
                )
                return
            if response is None:
                return  # withdrawn: settled elsewhere, or the task ended
            try:
                await runtime.answer(requester, task_id, {request.key: response})
                return
            except InvalidAnswerError as exc:
                problem = exc.problem
            except (TaskTerminalError, TaskNotFoundError):
                return
    finally:
        copies.release(copy)


async def _exchange(
    copies: Copies, copy: Copy, method: str, params: dict[str, Any]
) -> dict[str, Any] | None:
    """One request for ``copy``, its params and result checked by the SDK's models."""
    request_model, result_model = _MODELS[method]
    request = request_model.model_validate({"method": method, "params": params})
    dumped = request.model_dump(by_alias=True, mode="json", exclude_none=True)
    raw = await copies.send(copy, method, dumped.get("params") or {})
    if raw is None:
        return None
    result = result_model.model_validate(raw, by_name=False)
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


async def serve_until_terminal(
    runtime: TaskRuntime,
    copies: Copies,
    requester: Requester,
    task_id: str,
    channel: Channel,
    *,
    related_task: bool,
) -> None:
    """Wait for the task to end, asking its questions over ``channel`` meanwhile.

    The stream asks again whenever the task (again) needs input, and whenever
    another stream of the session hands a question on (`Copies.watch`).
    """
    task = await runtime.get(requester, task_id)  # outside the group: errors stay bare
    async with anyio.create_task_group() as tg:
        while not task.is_terminal:
            with copies.watch(channel, task_id) as handed_on:
                if task.status is TaskStatus.INPUT_REQUIRED:
                    tg.start_soon(
                        lambda: ask_open_questions(
                            runtime,
                            copies,
                            requester,
                            task_id,
                            channel,
                            related_task=related_task,
                        )
                    )
                task = await _next_state(runtime, requester, task, handed_on)
        tg.cancel_scope.cancel()


async def _next_state(
    runtime: TaskRuntime, requester: Requester, task: Task, handed_on: anyio.Event
) -> Task:
    """The task after its next change, or as it is once a question was handed on."""
    changed: Task | None = None
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:

        async def wait_change() -> None:
            nonlocal changed, failure
            try:
                changed = await runtime.wait_change(requester, task.task_id, task)
            except Exception as exc:  # re-raised below, bare rather than in a group
                failure = exc
            tg.cancel_scope.cancel()

        async def wait_handed_on() -> None:
            await handed_on.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(wait_change)
        tg.start_soon(wait_handed_on)
    if failure is not None:
        raise failure
    if changed is not None:
        return changed
    return await runtime.get(requester, task.task_id)
