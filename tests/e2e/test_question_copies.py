"""One copy of a question per session, withdrawn everywhere once it is settled.

On 2025-11-25 a question reaches a person as an ``elicitation/create`` request:
pushed on the session's standalone stream and, when the client follows the
spec, asked on its ``tasks/result`` stream as well. A person who takes a while
to answer must see one dialog, not two; and once the question is answered
anywhere (another session, ``tasks/update`` on the other wire, its timeout)
or its task ends, every copy still open is withdrawn: the client receives
``notifications/cancelled`` naming that request's id.

Real ``mcp-tasks serve`` processes over stdio and HTTP (one HTTP server for the
module; each test is a fresh owner of its token file). The "person" answers
after an observed event, never after a sleep. What the server decides *not* to
send leaves nothing on the wire, so the server's log is the witness: it logs
each copy it asks, declines to ask again, or withdraws, and `LogWatch` wakes the
test on that line.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_tasks.client import MODERN_WIRE, JSONObject, RpcError, TaskClient

from .hitl_support import (
    ELICIT,
    ELICITATION,
    TIMEOUT,
    Elicitations,
    HttpServer,
    accept,
    answer_with,
    http_server,
    log_tail,
    server_setup,
    stdio_client,
    task_id_of,
    text_of,
)
from .support import LogWatch, wait_notification

Connect = Callable[..., AbstractAsyncContextManager[TaskClient]]

OWNERS = [f"person{number}" for number in range(40)]
_next_owner = itertools.count()
TASK = {"ttl": 60_000}
CANCELLED = "notifications/cancelled"
#: How long the timed question waits: long enough for the push to arrive first.
QUESTION_SECONDS = 3.0


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def shared_http(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncGenerator[HttpServer]:
    setup = server_setup(tmp_path_factory.mktemp("copies-http"), owners=OWNERS)
    async with http_server(setup) as server:
        yield server


@pytest.fixture
def owner() -> str:
    """An owner no other test in this module uses."""
    return OWNERS[next(_next_owner)]


@dataclass(frozen=True)
class Server:
    """How a test reaches its server, and the server's log."""

    connect: Connect
    log: LogWatch


@pytest.fixture
def server(
    transport: str, shared_http: HttpServer, owner: str, tmp_path: Path
) -> Server:
    """stdio: a server process per client, spawned by ``connect``; HTTP: the shared one."""
    if transport == "http":
        if shared_http.process.returncode is not None:
            pytest.fail("the HTTP server died:\n" + log_tail(shared_http.setup.log))

        def http_client(**kwargs: Any) -> AbstractAsyncContextManager[TaskClient]:
            return shared_http.client(owner, **kwargs)

        return Server(http_client, shared_http.log)
    setup = server_setup(tmp_path / "stdio")
    watch = LogWatch()

    def spawn(**kwargs: Any) -> AbstractAsyncContextManager[TaskClient]:
        return stdio_client(setup, watch=watch, **kwargs)

    return Server(spawn, watch)


async def start_task(
    client: TaskClient, tool: str, arguments: JSONObject | None = None
) -> str:
    return task_id_of(client, await client.call_tool(tool, arguments, task=TASK))


async def first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of ``waits`` has returned (the others are cancelled)."""
    async with anyio.create_task_group() as tg:

        async def run(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        for wait in waits:
            tg.start_soon(run, wait)


class Background:
    """A request left open in the background, its result kept for later."""

    def __init__(self) -> None:
        self.result: JSONObject | None = None
        self.done = anyio.Event()

    async def run(self, request: Awaitable[JSONObject]) -> None:
        self.result = await request
        self.done.set()


def not_asked_again(task_id: str, on: str) -> re.Pattern[bytes]:
    """The server's log line: a question of ``task_id`` not sent again ``on`` a stream."""
    return re.compile(
        rf"of task {re.escape(task_id)} is already open on session .*"
        rf"not asked again on the {re.escape(on)}".encode()
    )


def asked(task_id: str, on: str) -> re.Pattern[bytes]:
    """The server's log line: a question of ``task_id`` asked ``on`` a stream."""
    return re.compile(
        rf"of task {re.escape(task_id)} asked on session .*\({re.escape(on)}, ".encode()
    )


def elicitations(client: TaskClient) -> list[JSONObject]:
    """The ``elicitation/create`` requests ``client`` received, with their ids."""
    return [r for r in client.server_requests if r["method"] == ELICIT]


def request_id_of(client: TaskClient, message: str) -> str | int:
    """The id of the (last) ``elicitation/create`` asking ``message``."""
    ids = [r["id"] for r in elicitations(client) if r["params"]["message"] == message]
    assert ids, f"no elicitation {message!r} reached this client"
    return ids[-1]


def withdrawn(client: TaskClient) -> dict[str | int, str]:
    """The request ids the server withdrew from ``client``, with the reasons."""
    return {
        n["params"]["requestId"]: str(n["params"].get("reason"))
        for n in client.notifications
        if n["method"] == CANCELLED
    }


async def wait_withdrawn(client: TaskClient, request_id: str | int) -> str:
    """Wait (bounded) for the withdrawal of ``request_id``; its reason."""
    params = await wait_notification(
        client, CANCELLED, lambda p: p.get("requestId") == request_id
    )
    return str(params.get("reason"))


def refuse_until(opened: anyio.Event) -> Callable[[JSONObject], Awaitable[JSONObject]]:
    """A client that turns pushed questions away until ``tasks/result`` is open,
    then holds each question it gets (the person is thinking)."""

    async def reply(params: JSONObject) -> JSONObject:
        if not opened.is_set():
            raise RpcError(-32600, "not on this stream")
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    return reply


# ---------------------------------------------------------------- one copy


async def test_a_pushed_question_is_not_asked_again_on_tasks_result(
    server: Server,
) -> None:
    # The issue: the person takes a few seconds over the pushed dialog while
    # the client, as the spec asks on input_required, holds tasks/result open.
    made_up_their_mind = anyio.Event()

    async def person(params: JSONObject) -> JSONObject:
        await made_up_their_mind.wait()
        return accept(answer="blue")

    questions = Elicitations(person)
    result = Background()
    async with server.connect(capabilities=ELICITATION, on_request=questions) as client:
        task_id = await start_task(
            client, "ask", {"question": "Which colour?", "choices": ["red", "blue"]}
        )
        with anyio.fail_after(TIMEOUT):
            await questions.wait_for(1)  # the pushed dialog: the person starts thinking
            async with anyio.create_task_group() as tg:
                tg.start_soon(result.run, client.task_result(task_id))
                # The tasks/result stream decides about the question: either it
                # leaves it to the push (logged), or a second copy arrives.
                await first_of(
                    lambda: server.log.line(
                        not_asked_again(task_id, "tasks/result stream")
                    ),
                    lambda: questions.wait_for(2),
                )
                made_up_their_mind.set()  # ...and only now does the person answer
    assert questions.messages() == ["Which colour?"], "the question was asked twice"
    assert result.result is not None
    assert text_of(result.result) == "blue"
    assert withdrawn(client) == {}  # answered, not withdrawn


async def test_tasks_result_asks_a_session_without_a_standalone_stream(
    shared_http: HttpServer, owner: str
) -> None:
    # Nothing can be pushed to a session without a GET stream: a push sent
    # there would be dropped and would keep tasks/result from asking.
    questions = Elicitations(answer_with(accept(answer="ready")))
    async with shared_http.client(
        owner, capabilities=ELICITATION, on_request=questions, standalone_stream=False
    ) as client:
        task_id = await start_task(client, "ask", {"question": "Ready?"})
        with anyio.fail_after(TIMEOUT):
            result = await client.task_result(task_id)
            await shared_http.log.line(asked(task_id, "tasks/result stream"))
    assert text_of(result) == "ready"
    assert questions.messages() == ["Ready?"]


# --------------------------------------------------------------- withdrawal


async def test_an_answer_in_one_session_withdraws_the_copies_in_the_others(
    shared_http: HttpServer, owner: str
) -> None:
    # Three sessions of one person. A answers; B holds the questions on its
    # tasks/result stream (it turned the pushes away); C holds the pushes. An
    # answer withdraws that question's copies at once, while the task still
    # waits for the other question.
    name_given, colour_given = anyio.Event(), anyio.Event()

    async def answers_when_told(params: JSONObject) -> JSONObject:
        if params["message"] == "What is your name?":
            await name_given.wait()
            return accept(name="Ada")
        await colour_given.wait()
        return accept(colour="green")

    def session(on_request: Any) -> AbstractAsyncContextManager[TaskClient]:
        return shared_http.client(
            owner, capabilities=ELICITATION, on_request=on_request
        )

    result_open = anyio.Event()
    a_questions = Elicitations(answers_when_told)
    b_questions = Elicitations(refuse_until(result_open))
    c_questions = Elicitations()
    b_result = Background()
    async with (
        session(a_questions) as a,
        session(b_questions) as b,
        session(c_questions) as c,
        anyio.create_task_group() as tg,
    ):
        task_id = await start_task(a, "two_questions")
        with anyio.fail_after(TIMEOUT):
            await a_questions.wait_for(2)
            await c_questions.wait_for(2)
            await b_questions.wait_for(2)  # both pushes, turned away
            result_open.set()
            tg.start_soon(b_result.run, b.task_result(task_id))
            await b_questions.wait_for(4)  # both again, on tasks/result
            b_name = request_id_of(b, "What is your name?")
            c_name = request_id_of(c, "What is your name?")

            name_given.set()
            b_reason = await wait_withdrawn(b, b_name)
            c_reason = await wait_withdrawn(c, c_name)
            assert (await a.get_task(task_id))["status"] == "input_required"
            assert set(withdrawn(b)) == {b_name}  # the colour is still asked
            assert set(withdrawn(c)) == {c_name}

            b_colour = request_id_of(b, "Which colour?")
            c_colour = request_id_of(c, "Which colour?")
            colour_given.set()
            await wait_withdrawn(b, b_colour)
            await wait_withdrawn(c, c_colour)
            await b_result.done.wait()
        assert "answered" in b_reason
        assert "answered" in c_reason
        assert set(withdrawn(a)) == set()
        assert set(withdrawn(b)) == {b_name, b_colour}
        assert set(withdrawn(c)) == {c_name, c_colour}
    assert b_result.result is not None
    assert text_of(b_result.result) == "Ada likes green"
    assert len(b_questions.received) == 4
    assert len(c_questions.received) == 2


async def test_an_answer_on_the_other_wire_withdraws_the_pushed_copy(
    shared_http: HttpServer, owner: str
) -> None:
    questions = Elicitations()  # holds the pushed dialog open
    async with (
        shared_http.client(
            owner, capabilities=ELICITATION, on_request=questions
        ) as old,
        shared_http.client(owner, wire=MODERN_WIRE, capabilities=ELICITATION) as new,
    ):
        task_id = await start_task(old, "ask", {"question": "Proceed?"})
        with anyio.fail_after(TIMEOUT):
            await questions.wait_for(1)
            pushed = request_id_of(old, "Proceed?")
            task = await new.poll_task(task_id, until={"input_required"})
            [key] = task["inputRequests"]
            await new.update_task(task_id, {key: accept(answer="yes")})
            reason = await wait_withdrawn(old, pushed)
            done = await new.poll_task(task_id)
    assert text_of(done["result"]) == "yes"
    assert "answered" in reason


async def test_a_question_that_times_out_is_withdrawn(server: Server) -> None:
    questions = Elicitations()  # the person never answers
    async with server.connect(capabilities=ELICITATION, on_request=questions) as client:
        task_id = await start_task(client, "timed_ask", {"seconds": QUESTION_SECONDS})
        with anyio.fail_after(TIMEOUT):
            await questions.wait_for(1)
            pushed = request_id_of(client, "Answer quickly, please")
            reason = await wait_withdrawn(client, pushed)
            result = await client.task_result(task_id)
    assert text_of(result) == "action: timeout"
    assert "timed out" in reason
    assert questions.messages() == ["Answer quickly, please"]


@pytest.mark.parametrize("where", ["standalone stream", "tasks/result stream"])
async def test_cancelling_the_task_withdraws_its_open_question(
    server: Server, where: str
) -> None:
    result_open = anyio.Event()
    if where == "tasks/result stream":
        questions = Elicitations(refuse_until(result_open))
    else:
        questions = Elicitations()
    result = Background()
    async with (
        server.connect(capabilities=ELICITATION, on_request=questions) as client,
        anyio.create_task_group() as tg,
    ):
        task_id = await start_task(client, "ask", {"question": "Wait for me?"})
        with anyio.fail_after(TIMEOUT):
            await questions.wait_for(1)
            if where == "tasks/result stream":
                result_open.set()
                tg.start_soon(result.run, client.task_result(task_id))
                await questions.wait_for(2)
            held = request_id_of(client, "Wait for me?")
            await client.cancel_task(task_id)
            reason = await wait_withdrawn(client, held)
            if where == "tasks/result stream":
                await result.done.wait()
        assert reason == "The task was cancelled."
    if result.result is not None:
        assert result.result["isError"] is True
