"""Task status notifications over ``subscriptions/listen`` (2026-07-28 extension).

A client that declared the extension subscribes with
``subscriptions/listen {notifications: {taskIds: [...]}}``. The response is the
stream: first ``notifications/subscriptions/acknowledged`` with the task ids
the server agreed to (those the requestor may see), then the current state of
each, then a ``notifications/tasks`` frame carrying the complete
``DetailedTask`` (exactly what ``tasks/get`` would return) after every change.
Progress and log messages never travel here (EXT l.507). Polling ``tasks/get``
stays sufficient; this only saves round trips.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, cast

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectSendStream
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY

from mcp_tasks._exceptions import McpTasksError
from mcp_tasks._model import Task, TaskId
from mcp_tasks._runtime import LogEvent, ProgressEvent, Requester
from mcp_tasks.binding._common import Requesters, invalid_params

logger = logging.getLogger("mcp_tasks.binding.listen")

TASKS_NOTIFICATION: Final = "notifications/tasks"
#: Changes buffered per stream; a client that stops reading loses its stream.
MAX_BUFFERED: Final = 1024

Render = Callable[[Requester, str], Awaitable[dict[str, Any]]]
"""Renders a task as ``tasks/get`` would for that requestor."""


def _task_ids(notifications: types.SubscriptionFilter) -> list[str]:
    raw: object = (notifications.model_extra or {}).get("taskIds", [])
    if not isinstance(raw, list) or not all(
        isinstance(i, str) for i in cast("list[object]", raw)
    ):
        raise invalid_params("notifications.taskIds", "must be a list of task ids")
    return list(cast("list[str]", raw))


class TaskNotifications:
    """Serves task subscriptions and feeds them from engine events."""

    def __init__(
        self,
        requesters: Requesters,
        render: Render,
        declares_extension: Callable[[ServerRequestContext[Any, Any]], bool],
        missing_extension: Callable[[], MCPError],
    ) -> None:
        self._requesters = requesters
        self._render = render
        self._declares = declares_extension
        self._missing = missing_extension
        self._streams: dict[TaskId, set[MemoryObjectSendStream[str]]] = {}

    async def listen(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.SubscriptionsListenRequestParams,
    ) -> types.SubscriptionsListenResult:
        """One ``subscriptions/listen`` stream."""
        subscription_id = ctx.request_id
        if subscription_id is None:
            raise MCPError(-32600, "subscriptions/listen requires a request id")
        wanted = _task_ids(params.notifications)
        if wanted and not self._declares(ctx):
            raise self._missing()
        requester = self._requesters.of(ctx)
        honored = [
            task_id for task_id in wanted if await self._visible(requester, task_id)
        ]
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: subscription_id}
        send, receive = anyio.create_memory_object_stream[str](MAX_BUFFERED)
        for task_id in honored:  # subscribe before the ack: no change is missed
            self._streams.setdefault(TaskId(task_id), set()).add(send)
        try:
            await self._send(ctx, _acknowledgement(params.notifications, honored, meta))
            for task_id in honored:  # the state now, then every change
                send.send_nowait(task_id)
            async with receive:
                async for task_id in receive:
                    await self._notify(ctx, requester, task_id, meta)
        finally:
            for task_id in honored:
                streams = self._streams.get(TaskId(task_id))
                if streams is not None:
                    streams.discard(send)
                    if not streams:
                        del self._streams[TaskId(task_id)]
            send.close()
        return types.SubscriptionsListenResult(_meta=meta)

    async def _visible(self, requester: Requester, task_id: str) -> bool:
        try:
            await self._render(requester, task_id)
        except (McpTasksError, MCPError):
            return False
        return True

    async def _notify(
        self,
        ctx: ServerRequestContext[Any, Any],
        requester: Requester,
        task_id: str,
        meta: Mapping[str, Any],
    ) -> None:
        try:
            detailed = await self._render(requester, task_id)
        except (McpTasksError, MCPError):
            return  # purged meanwhile: nothing left to report
        detailed.pop("resultType", None)
        params = {**detailed, "_meta": dict(meta)}
        notification = types.Notification[dict[str, Any], str](
            method=TASKS_NOTIFICATION, params=params
        )
        await self._send(ctx, notification)

    @staticmethod
    async def _send(ctx: ServerRequestContext[Any, Any], notification: Any) -> None:
        await ctx.session.send_notification(
            notification, related_request_id=ctx.request_id
        )

    # --------------------------------------------------------- engine events

    def task_changed(self, task: Task, request_meta: Mapping[str, Any]) -> None:
        """Queue the task for every stream subscribed to it."""
        for stream in list(self._streams.get(task.task_id, ())):
            try:
                stream.send_nowait(task.task_id)
            except anyio.WouldBlock:
                logger.warning(
                    "listen stream for %s fell behind; ending it", task.task_id
                )
                stream.close()
            except anyio.ClosedResourceError:
                pass

    def task_progress(self, event: ProgressEvent) -> None:
        """Progress never travels on a listen stream (EXT l.507)."""
        return

    def task_log(self, event: LogEvent) -> None:
        """Log messages never travel on a listen stream (EXT l.507)."""
        return

    def question_answered(self, task_id: TaskId, key: str) -> None:
        """An answer shows in the next frame, sent on the task's change."""
        return


def _acknowledgement(
    requested: types.SubscriptionFilter, task_ids: list[str], meta: Mapping[str, Any]
) -> types.SubscriptionsAcknowledgedNotification:
    # List-change kinds are honoured vacuously: this server's tool list never
    # changes, so they simply never fire (as the SDK's own listen handler does).
    honored = types.SubscriptionFilter.model_validate(
        {
            "toolsListChanged": True if requested.tools_list_changed else None,
            "promptsListChanged": True if requested.prompts_list_changed else None,
            "resourcesListChanged": True if requested.resources_list_changed else None,
            "taskIds": task_ids,
        }
    )
    return types.SubscriptionsAcknowledgedNotification(
        params=types.SubscriptionsAcknowledgedNotificationParams(
            notifications=honored, _meta=dict(meta)
        )
    )
