"""Asking a task's open questions over server-to-client requests (2025-11-25).

On the handshake wire a question is an ordinary ``elicitation/create`` (or
``sampling/createMessage``, ``roots/list``) request from server to client. It
can ride an open request's stream (``tasks/result``, or the ``tools/call`` of
a synchronous call) or a session's standalone channel (a push to a client that
only polls ``tasks/get``). Every channel asks the same durable questions; the
first valid answer is recorded and the rest are ignored by the engine.
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
from mcp_tasks._model import InputRequest, TaskStatus
from mcp_tasks._questions import (
    CAPABILITY_OF,
    ELICIT,
    LIST_ROOTS,
    SAMPLE,
    InvalidAnswerError,
)
from mcp_tasks.binding._common import RELATED_TASK_META
from mcp_tasks.engine import Requester, TaskRuntime

logger = logging.getLogger("mcp_tasks.binding.delivery")

Send = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""Sends one server-to-client request; returns the client's result."""

#: How often one channel re-asks a question whose answer did not fit it.
MAX_ASKS_PER_CHANNEL = 3

_MODELS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    ELICIT: (types.ElicitRequest, types.ElicitResult),
    SAMPLE: (types.CreateMessageRequest, types.CreateMessageResult),
    LIST_ROOTS: (types.ListRootsRequest, types.ListRootsResult),
}


def request_channel(ctx: ServerRequestContext[Any, Any]) -> Send:
    """Send on the stream of the request behind ``ctx`` (its SSE stream on HTTP)."""

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


#: How long a pushed question waits for an answer on a session's standalone
#: channel. Over HTTP a message sent while no GET stream is open is dropped by
#: the transport, so a push must not wait forever; the question stays open and
#: is offered again on tasks/result, on the next session, or by a later push.
PUSH_TIMEOUT_SECONDS = 600.0


def connection_channel(connection: Connection) -> Send:
    """Send on a session's standalone channel (the GET stream on HTTP)."""

    async def send(method: str, params: dict[str, Any]) -> dict[str, Any]:
        return await connection.send_raw_request(
            method, params, {"timeout": PUSH_TIMEOUT_SECONDS}
        )

    return send


def can_answer(capabilities: types.ClientCapabilities | None, method: str) -> bool:
    """Whether a client with ``capabilities`` can answer a ``method`` question."""
    if capabilities is None:
        return False
    return getattr(capabilities, CAPABILITY_OF[method], None) is not None


async def ask_open_questions(
    runtime: TaskRuntime,
    requester: Requester,
    task_id: str,
    send: Send,
    in_flight: set[str],
    *,
    related_task: bool,
    capabilities: types.ClientCapabilities | None = None,
    check_capabilities: bool = False,
) -> None:
    """Ask each open question of the task over ``send``, all at once.

    Questions already in flight on this channel are skipped. With
    ``related_task`` the requests carry the related-task ``_meta`` (they belong
    to a task the client knows about).
    """
    try:
        requests = await runtime.input_requests(requester, task_id)
    except TaskNotFoundError:
        return
    async with anyio.create_task_group() as tg:
        for request in requests:
            if request.key in in_flight:
                continue
            if check_capabilities and not can_answer(capabilities, request.method):
                continue
            in_flight.add(request.key)
            tg.start_soon(
                _ask,
                runtime,
                requester,
                task_id,
                request,
                send,
                in_flight,
                related_task,
            )


async def _ask(
    runtime: TaskRuntime,
    requester: Requester,
    task_id: str,
    request: InputRequest,
    send: Send,
    in_flight: set[str],
    related_task: bool,
) -> None:
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
                response = await send(request.method, params)
            except Exception as exc:  # the client refused or vanished: not our failure
                logger.debug(
                    "question %s of %s not answered here: %r", request.key, task_id, exc
                )
                return
            try:
                await runtime.answer(requester, task_id, {request.key: response})
                return
            except InvalidAnswerError as exc:
                problem = exc.problem
            except (TaskTerminalError, TaskNotFoundError):
                return
    finally:
        in_flight.discard(request.key)


async def serve_until_terminal(
    runtime: TaskRuntime,
    requester: Requester,
    task_id: str,
    send: Send,
    *,
    related_task: bool,
) -> None:
    """Wait for the task to end, asking its questions over ``send`` meanwhile."""
    in_flight: set[str] = set()
    task = await runtime.get(requester, task_id)  # outside the group: errors stay bare
    async with anyio.create_task_group() as tg:
        while not task.is_terminal:
            if task.status is TaskStatus.INPUT_REQUIRED:
                tg.start_soon(
                    lambda: ask_open_questions(
                        runtime,
                        requester,
                        task_id,
                        send,
                        in_flight,
                        related_task=related_task,
                    )
                )
            task = await runtime.wait_change(requester, task_id, task)
        tg.cancel_scope.cancel()
