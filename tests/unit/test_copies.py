"""`Copies`: one copy of a question per session, withdrawn once settled.

The rules, checked against fake streams in process (no journal, no threads, so
`anyio.wait_all_tasks_blocked` settles everything). End to end over stdio and
HTTP: ``tests/e2e/test_question_copies.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import pytest
from mcp.server.connection import Connection
from mcp.shared.dispatcher import CallOptions

from mcp_tasks.binding._copies import (
    ANSWERED,
    ASKED_AGAIN,
    MAX_ASKS_PER_CHANNEL,
    NOT_WAITING,
    Channel,
    Copies,
    Copy,
)

TASK = "task-1"
ELICIT = "elicitation/create"


class FakeStream:
    """An SDK ``Outbound`` that records what is sent; requests wait for `answer`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Mapping[str, Any], CallOptions]] = []
        self.notices: list[tuple[str, Mapping[str, Any]]] = []
        self._answer = anyio.Event()

    async def send_raw_request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        opts: CallOptions | None = None,
    ) -> dict[str, Any]:
        self.requests.append((method, params or {}, opts or {}))
        await self._answer.wait()
        return {"action": "accept", "content": {}}

    async def notify(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        opts: CallOptions | None = None,
    ) -> None:
        self.notices.append((method, params or {}))

    def answer(self) -> None:
        self._answer.set()

    def withdrawn(self) -> list[tuple[Any, Any]]:
        """(request id, reason) of every ``notifications/cancelled`` sent."""
        return [
            (params["requestId"], params["reason"])
            for method, params in self.notices
            if method == "notifications/cancelled"
        ]


class Session:
    """A session with a standalone stream and any number of request streams."""

    def __init__(self) -> None:
        self.stream = FakeStream()
        self.connection = Connection(self.stream, protocol_version="2025-11-25")

    def standalone(self) -> Channel:
        return Channel(self.connection, self.stream, "standalone stream", True)

    def request_stream(self, stream: FakeStream | None = None) -> Channel:
        return Channel(
            self.connection, stream or FakeStream(), "tasks/result stream", False
        )


def outbound(channel: Channel) -> FakeStream:
    stream = channel.outbound
    assert isinstance(stream, FakeStream)
    return stream


@pytest.fixture
def copies() -> Copies:
    return Copies()


def claimed(copies: Copies, channel: Channel, key: str = "q") -> Copy:
    copy = copies.claim(channel, TASK, key)
    assert copy is not None
    return copy


async def send(copies: Copies, copy: Copy, results: list[Any]) -> None:
    """Send ``copy`` and record what `Copies.send` returned; release it after."""
    try:
        results.append(await copies.send(copy, ELICIT, {"message": "?"}))
    finally:
        copies.release(copy)


async def test_a_request_stream_defers_to_a_push_of_the_same_session(
    copies: Copies,
) -> None:
    alice, other = Session(), Session()
    claimed(copies, alice.standalone())
    assert copies.claim(alice.request_stream(), TASK, "q") is None
    assert copies.claim(alice.standalone(), TASK, "q") is None
    claimed(copies, other.request_stream())  # another session asks on its own
    claimed(copies, alice.request_stream(), key="other question")


async def test_a_push_defers_to_a_request_stream_of_the_same_session(
    copies: Copies,
) -> None:
    alice = Session()
    claimed(copies, alice.request_stream())
    assert copies.claim(alice.standalone(), TASK, "q") is None


async def test_a_newer_request_stream_takes_over_from_an_older_one(
    copies: Copies,
) -> None:
    alice = Session()
    older, newer = alice.request_stream(), alice.request_stream()
    results: list[Any] = []
    first = claimed(copies, older)
    second: Copy | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(send, copies, first, results)
        await anyio.wait_all_tasks_blocked()
        second = claimed(copies, newer)
        assert copies.claim(older, TASK, "q") is None  # and not back again
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert second is not None
    assert results == [None]
    assert outbound(older).withdrawn() == [(first.request_id, ASKED_AGAIN)]
    assert second.withdrawn is None


async def test_requests_go_out_under_minted_ids_without_the_sdks_notice(
    copies: Copies,
) -> None:
    alice = Session()
    channel = alice.standalone()
    copy = claimed(copies, channel)
    results: list[Any] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(send, copies, copy, results)
        await anyio.wait_all_tasks_blocked()
        alice.stream.answer()
    [(method, _, options)] = alice.stream.requests
    assert method == ELICIT
    assert options == {"request_id": copy.request_id, "cancel_on_abandon": False}
    assert isinstance(copy.request_id, str)
    assert not copy.request_id.lstrip("-").isdigit()  # never an SDK-style number
    assert results == [{"action": "accept", "content": {}}]
    assert alice.stream.withdrawn() == []


async def test_an_answer_withdraws_every_copy_and_no_new_one_goes_out(
    copies: Copies,
) -> None:
    alice, bob = Session(), Session()
    pushed = claimed(copies, alice.standalone())
    on_result_stream = claimed(copies, bob.request_stream())
    results: list[Any] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(send, copies, pushed, results)
        tg.start_soon(send, copies, on_result_stream, results)
        await anyio.wait_all_tasks_blocked()
        copies.settled(TASK, "q")
    assert results == [None, None]
    assert alice.stream.withdrawn() == [(pushed.request_id, ANSWERED)]
    assert outbound(on_result_stream.channel).withdrawn() == [
        (on_result_stream.request_id, ANSWERED)
    ]
    # Once nobody is reading the task's questions, nothing is kept for it.
    assert copies._stale == {}


async def test_a_stream_that_read_a_question_before_it_settled_does_not_ask_it(
    copies: Copies,
) -> None:
    late = Session().request_stream()
    with copies.reading(TASK):  # the journal read is in flight...
        copies.settled(TASK, "q")  # ...when the answer is recorded
        assert copies.claim(late, TASK, "q") is None
        claimed(copies, late, key="still open")
    with copies.reading(TASK):
        copies.task_ended(TASK, "The task was cancelled.")
        assert copies.claim(late, TASK, "other") is None
    assert copies._readers == {}
    assert copies._stale == {}


async def test_a_copy_withdrawn_before_it_went_out_is_never_sent(
    copies: Copies,
) -> None:
    alice = Session()
    copy = claimed(copies, alice.standalone())
    copies.task_ended(TASK, "The task was cancelled.")
    assert await copies.send(copy, ELICIT, {}) is None
    assert alice.stream.requests == []
    assert alice.stream.notices == []


async def test_the_end_of_the_task_withdraws_all_its_copies(copies: Copies) -> None:
    alice = Session()
    results: list[Any] = []
    async with anyio.create_task_group() as tg:
        for key in ("a", "b"):
            tg.start_soon(
                send, copies, claimed(copies, alice.standalone(), key), results
            )
        await anyio.wait_all_tasks_blocked()
        copies.settled(TASK, "a")
        copies.task_ended(TASK, "The task was cancelled.")
    assert [reason for _, reason in alice.stream.withdrawn()] == [
        ANSWERED,
        "The task was cancelled.",
    ]
    # Forgotten with the task: nothing is kept per finished task.
    assert copies._open == {}
    assert copies._stale == {}


async def test_a_copy_given_up_wakes_the_sessions_other_streams(
    copies: Copies,
) -> None:
    alice, bob = Session(), Session()
    waiting = alice.request_stream()
    push = claimed(copies, alice.standalone())
    with (
        copies.watch(waiting, TASK) as woken,
        copies.watch(push.channel, TASK) as itself,
        copies.watch(bob.request_stream(), TASK) as elsewhere,
    ):
        copies.release(push)  # e.g. the client refused the pushed request
        assert woken.is_set()
        assert not itself.is_set()
        assert not elsewhere.is_set()
    claimed(copies, waiting)  # nothing blocks the tasks/result stream now
    assert copies._watchers == {}


async def test_a_settled_copy_wakes_nobody(copies: Copies) -> None:
    alice = Session()
    push = claimed(copies, alice.standalone())
    with copies.watch(alice.request_stream(), TASK) as woken:
        copies.settled(TASK, "q")
        copies.release(push)
        assert not woken.is_set()


async def test_a_push_whose_stream_closed_no_longer_blocks_the_session(
    copies: Copies,
) -> None:
    alice = Session()
    results: list[Any] = []
    push = claimed(copies, alice.standalone())
    again: Copy | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(send, copies, push, results)
        await anyio.wait_all_tasks_blocked()
        with copies.watch(alice.request_stream(), TASK) as woken:
            copies.detach(alice.connection)
            assert woken.is_set()
        assert push.withdrawn is None  # an answer may still come back over a POST
        again = claimed(copies, alice.request_stream())
        await anyio.wait_all_tasks_blocked()
    # Withdrawn on the stream that took over: the closed one would lose it.
    assert alice.stream.withdrawn() == []
    assert again is not None
    assert outbound(again.channel).withdrawn() == [(push.request_id, ASKED_AGAIN)]
    assert again.withdrawn is None


async def test_a_stream_asks_one_question_a_bounded_number_of_times(
    copies: Copies,
) -> None:
    channel = Session().request_stream()
    for _ in range(MAX_ASKS_PER_CHANNEL):
        copies.release(claimed(copies, channel))
    assert copies.claim(channel, TASK, "q") is None


async def test_a_request_abandoned_for_another_reason_is_withdrawn_too(
    copies: Copies,
) -> None:
    alice = Session()
    copy = claimed(copies, alice.standalone())
    results: list[Any] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(send, copies, copy, results)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()  # the request that carried it ended, say
    assert results == []
    assert alice.stream.withdrawn() == [(copy.request_id, NOT_WAITING)]
