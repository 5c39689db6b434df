"""Human in the loop, end to end: real server processes, over stdio and HTTP.

A tool asks the user a question; the task waits ``input_required`` holding no
worker; the answer arrives over whichever channel the client uses; the task
completes. On 2025-11-25 questions travel as ``elicitation/create`` requests
(on an open ``tasks/result`` and pushed to the owner's live sessions); on
2026-07-28 as ``inputRequests`` in ``tasks/get``, answered with
``tasks/update``, or as multi-round-trip results of a synchronous call.

HTTP tests share one server per module; each test authenticates as a fresh
owner (from the token file), so no test sees another's questions. The stdio
tests, the restart test and the scale test start servers of their own.
Nothing sleeps to synchronise: waits are event-driven or poll at the server's
suggested interval, and all are bounded by ``anyio.fail_after``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import pytest

from mcp_tasks.client import MODERN_WIRE, JSONObject, RpcError, TaskClient

from .hitl_support import (
    ELICIT,
    ELICITATION,
    RELATED_TASK,
    TIMEOUT,
    Elicitations,
    HttpServer,
    accept,
    answer_with,
    http_server,
    log_tail,
    related_task_of,
    server_setup,
    stdio_client,
    task_id_of,
    text_of,
)

Connect = Callable[..., AbstractAsyncContextManager[TaskClient]]

OWNERS = [f"user{number}" for number in range(100)]
_next_owner = itertools.count()

INVALID_PARAMS = -32602
MISSING_CAPABILITY = -32021
TASK = {"ttl": 60_000}
T = TypeVar("T")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def shared_http(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncGenerator[HttpServer]:
    """One HTTP server for the module; tests tell themselves apart by owner."""
    setup = server_setup(tmp_path_factory.mktemp("hitl-http"), owners=OWNERS)
    async with http_server(setup) as server:
        yield server


@pytest.fixture
def owner() -> str:
    """An owner no other test in this module uses."""
    return OWNERS[next(_next_owner)]


@pytest.fixture(params=["stdio", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connect(
    transport: str, shared_http: HttpServer, owner: str, tmp_path: Path
) -> Connect:
    """Open a client: stdio spawns a server of its own; HTTP joins the shared one."""
    if transport == "http" and shared_http.process.returncode is not None:
        pytest.fail(
            "the shared HTTP server died in an earlier test:\n"
            + log_tail(shared_http.setup.log)
        )
    setup = server_setup(tmp_path / "stdio")

    def open_client(**kwargs: Any) -> AbstractAsyncContextManager[TaskClient]:
        if transport == "stdio":
            return stdio_client(setup, **kwargs)
        return shared_http.client(owner, **kwargs)

    return open_client


async def start_task(
    client: TaskClient, tool: str, arguments: JSONObject | None = None
) -> str:
    """Call ``tool`` as a task (2025-11-25 opt-in, or the server's choice on 2026)."""
    task = TASK if client.wire != MODERN_WIRE else None
    return task_id_of(client, await client.call_tool(tool, arguments, task=task))


def status_notifications(client: TaskClient, task_id: str) -> list[str]:
    """The statuses ``notifications/tasks/status`` reported for ``task_id``."""
    return [
        str(note["params"].get("status"))
        for note in client.notifications
        if note["method"] == "notifications/tasks/status"
        and note["params"].get("taskId") == task_id
    ]


# ----------------------------------------------------------------- 2025-11-25


async def test_question_answered_through_tasks_result(connect: Connect) -> None:
    # This user turns the pushed question away; once tasks/result is open it
    # answers. So the answer can only have come through tasks/result's stream.
    result_open = False

    async def reply(params: JSONObject) -> JSONObject:
        if not result_open:
            raise RpcError(-32600, "not now")
        return accept(answer="blue")

    questions = Elicitations(reply)
    async with connect(capabilities=ELICITATION, on_request=questions) as client:
        task_id = await start_task(
            client, "ask", {"question": "Which colour?", "choices": ["red", "blue"]}
        )
        with anyio.fail_after(TIMEOUT):
            await questions.wait_for(1)  # the push, turned away
            result_open = True
            result = await client.task_result(task_id)
    assert text_of(result) == "blue"
    assert result["_meta"][RELATED_TASK] == {"taskId": task_id}
    assert len(questions.received) >= 2
    for params in questions.received:
        assert related_task_of(params) == task_id
        assert params["mode"] == "form"
        assert params["message"] == "Which colour?"
        answer_schema = params["requestedSchema"]["properties"]["answer"]
        assert answer_schema["enum"] == ["red", "blue"]


async def test_question_pushed_to_a_client_that_only_polls(connect: Connect) -> None:
    questions = Elicitations(answer_with(accept(answer="ready")))
    async with connect(capabilities=ELICITATION, on_request=questions) as client:
        task_id = await start_task(client, "ask", {"question": "Are you ready?"})
        with anyio.fail_after(TIMEOUT):
            task = await client.poll_task(task_id)
        # Only now, with the task over, does this client read the result.
        result = await client.task_result(task_id)
        statuses = status_notifications(client, task_id)
    assert task["status"] == "completed"
    assert text_of(result) == "ready"
    assert [related_task_of(p) for p in questions.received] == [task_id]
    assert questions.messages() == ["Are you ready?"]
    assert "input_required" in statuses


async def test_synchronous_call_asks_on_its_own_stream(connect: Connect) -> None:
    questions = Elicitations(answer_with(accept(answer="42")))
    async with connect(capabilities=ELICITATION, on_request=questions) as client:
        with anyio.fail_after(TIMEOUT):
            result = await client.call_tool("ask", {"question": "The answer?"})
    assert client.created_task(result) is None
    assert text_of(result) == "42"
    assert questions.messages() == ["The answer?"]
    assert related_task_of(questions.received[0]) is None


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("decline", "The user declined to answer."),
        ("cancel", "The user cancelled the question without answering."),
    ],
)
async def test_declined_or_cancelled_question_is_a_normal_result(
    connect: Connect, action: str, expected: str
) -> None:
    questions = Elicitations(answer_with({"action": action}))
    async with connect(capabilities=ELICITATION, on_request=questions) as client:
        task_id = await start_task(client, "ask", {"question": "Share your email?"})
        with anyio.fail_after(TIMEOUT):
            task = await client.poll_task(task_id)
            result = await client.task_result(task_id)
    assert task["status"] == "completed"
    assert result.get("isError") is not True
    assert text_of(result) == expected


async def test_answer_that_violates_the_schema_is_asked_again(
    connect: Connect,
) -> None:
    answers = [accept(answer="purple"), accept(answer="green")]

    async def reply(params: JSONObject) -> JSONObject:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    questions = Elicitations(reply)
    async with connect(capabilities=ELICITATION, on_request=questions) as client:
        task_id = await start_task(
            client, "ask", {"question": "Pick one", "choices": ["red", "green"]}
        )
        with anyio.fail_after(TIMEOUT):
            task = await client.poll_task(task_id)
            result = await client.task_result(task_id)
    assert task["status"] == "completed"
    assert text_of(result) == "green"
    first, second = questions.messages()
    assert first == "Pick one"
    assert second.startswith("Pick one (previous answer refused: ")
    assert "purple" in second


async def test_question_redelivered_to_a_new_session(
    shared_http: HttpServer, owner: str
) -> None:
    silent = Elicitations()  # a user who walks away without answering
    async with shared_http.client(
        owner, capabilities=ELICITATION, on_request=silent
    ) as first:
        task_id = await start_task(first, "ask", {"question": "Still there?"})
        with anyio.fail_after(TIMEOUT):
            await silent.wait_for(1)
        first_session = first.session_id
    questions = Elicitations(answer_with(accept(answer="back again")))
    async with shared_http.client(
        owner, capabilities=ELICITATION, on_request=questions
    ) as second:
        assert second.session_id != first_session
        with anyio.fail_after(TIMEOUT):
            task = await second.poll_task(task_id)
            result = await second.task_result(task_id)
    assert task["status"] == "completed"
    assert text_of(result) == "back again"
    assert [related_task_of(p) for p in questions.received] == [task_id]


async def test_kill_while_waiting_then_restart_and_answer(tmp_path: Path) -> None:
    setup = server_setup(tmp_path / "server")
    counter = tmp_path / "prepared.txt"
    async with http_server(setup) as server:
        async with server.client(
            "alice", capabilities=ELICITATION, on_request=Elicitations()
        ) as client:
            task_id = await start_task(
                client, "counted_ask", {"counter_file": str(counter)}
            )
            with anyio.fail_after(TIMEOUT):
                task = await client.poll_task(task_id, until={"input_required"})
            assert task["statusMessage"] == "Proceed with the prepared work?"
            await server.kill()
    assert counter.read_text().splitlines() == ["prepared"]

    questions = Elicitations(answer_with(accept(approve=True)))
    async with http_server(setup) as server:
        async with server.client(
            "alice", capabilities=ELICITATION, on_request=questions
        ) as client:
            with anyio.fail_after(TIMEOUT):
                task = await client.poll_task(task_id)
                result = await client.task_result(task_id)
    assert task["status"] == "completed"
    assert text_of(result) == "prepared #1; approved: True"
    assert counter.read_text().splitlines() == ["prepared"]  # the step ran once
    assert [related_task_of(p) for p in questions.received] == [task_id]


async def test_two_questions_are_asked_together(connect: Connect) -> None:
    both_asked = anyio.Event()
    replies = {
        "What is your name?": accept(name="Ada"),
        "Which colour?": accept(colour="green"),
    }

    async def reply(params: JSONObject) -> JSONObject:
        # Answer nothing until both questions are out: they wait together.
        if set(questions.messages()) == set(replies):
            both_asked.set()
        await both_asked.wait()
        return replies[str(params["message"])]

    questions = Elicitations(reply)
    async with connect(capabilities=ELICITATION, on_request=questions) as client:
        task_id = await start_task(client, "two_questions")
        with anyio.fail_after(TIMEOUT):
            result = await client.task_result(task_id)
            task = await client.get_task(task_id)
    assert task["status"] == "completed"
    assert text_of(result) == "Ada likes green"
    assert set(questions.messages()) == set(replies)
    assert {related_task_of(p) for p in questions.received} == {task_id}


async def test_task_cancelled_while_waiting(connect: Connect) -> None:
    release = anyio.Event()

    async def reply(params: JSONObject) -> JSONObject:
        await release.wait()
        return accept(answer="too late")

    questions = Elicitations(reply)
    async with connect(capabilities=ELICITATION, on_request=questions) as client:
        task_id = await start_task(client, "ask", {"question": "Wait for me?"})
        with anyio.fail_after(TIMEOUT):
            await questions.wait_for(1)
            cancelled = await client.cancel_task(task_id)
            asked = len(questions.received)
            release.set()  # the late answer must change nothing
            after = await start_task(client, "echo", {"text": "after"})
            await client.poll_task(after)
            task = await client.get_task(task_id)
            result = await client.task_result(task_id)
    assert cancelled["status"] == "cancelled"
    assert task["status"] == "cancelled"
    assert result["isError"] is True
    assert len(questions.received) == asked


async def test_client_without_elicitation_fails_the_task(connect: Connect) -> None:
    async with connect() as client:
        task_id = await start_task(client, "ask", {"question": "Anyone there?"})
        with anyio.fail_after(TIMEOUT):
            task = await client.poll_task(task_id)
            with pytest.raises(RpcError) as caught:
                await client.task_result(task_id)
    assert task["status"] == "failed"
    assert "elicitation" in task["statusMessage"]
    assert caught.value.code == MISSING_CAPABILITY
    assert caught.value.data == {"requiredCapabilities": {"elicitation": {}}}


async def test_unanswered_question_times_out(connect: Connect) -> None:
    silent = Elicitations()
    async with connect(capabilities=ELICITATION, on_request=silent) as client:
        task_id = await start_task(client, "timed_ask", {"seconds": 0.3})
        with anyio.fail_after(TIMEOUT):
            task = await client.poll_task(task_id)
            result = await client.task_result(task_id)
    assert task["status"] == "completed"
    assert text_of(result) == "action: timeout"


# ----------------------------------------------------------------- 2026-07-28


async def test_input_requests_answered_with_tasks_update(connect: Connect) -> None:
    async with connect(wire=MODERN_WIRE, capabilities=ELICITATION) as client:
        task_id = await start_task(client, "two_questions")
        with anyio.fail_after(TIMEOUT):
            task = await client.poll_task(task_id, until={"input_required"})
        requests = task["inputRequests"]
        assert set(requests) == {"name", "colour"}
        assert requests["name"]["method"] == ELICIT
        assert requests["name"]["params"]["message"] == "What is your name?"
        assert requests["colour"]["params"]["message"] == "Which colour?"
        assert "requestState" not in task

        await client.update_task(task_id, {"name": accept(name="Ada")})
        task = await client.get_task(task_id)
        assert task["status"] == "input_required"
        assert set(task["inputRequests"]) == {"colour"}

        with pytest.raises(RpcError) as caught:
            await client.update_task(task_id, {"colour": accept(colour="purple")})
        assert caught.value.code == INVALID_PARAMS
        assert cast("JSONObject", caught.value.data)["field"] == "inputResponses.colour"
        task = await client.get_task(task_id)
        assert task["status"] == "input_required"
        assert set(task["inputRequests"]) == {"colour"}

        await client.update_task(task_id, {"colour": accept(colour="green")})
        with anyio.fail_after(TIMEOUT):
            task = await client.poll_task(task_id)
    assert task["status"] == "completed"
    assert text_of(task["result"]) == "Ada likes green"


async def call_again(
    client: TaskClient,
    tool: str,
    arguments: JSONObject,
    responses: JSONObject,
    state: str,
) -> JSONObject:
    """The retry of a multi-round-trip ``tools/call``: answers plus the echoed state."""
    params = {
        "name": tool,
        "arguments": arguments,
        "inputResponses": responses,
        "requestState": state,
    }
    return await client.request("tools/call", params)


async def test_tampered_request_state_is_refused(connect: Connect) -> None:
    arguments: JSONObject = {"what": "deploy"}
    async with connect(wire=MODERN_WIRE, capabilities=ELICITATION) as client:
        with anyio.fail_after(TIMEOUT):
            first = await client.call_tool("confirm_now", arguments)
            [key] = first["inputRequests"]
            state: str = first["requestState"]
            middle = len(state) // 2
            tampered = state[:middle] + ("A" if state[middle] != "A" else "B")
            tampered += state[middle + 1 :]
            responses = {key: accept(approve=True)}
            with pytest.raises(RpcError) as caught:
                await call_again(client, "confirm_now", arguments, responses, tampered)
            # The genuine state still works afterwards.
            second = await call_again(
                client, "confirm_now", arguments, responses, state
            )
    assert caught.value.code == INVALID_PARAMS
    assert cast("JSONObject", caught.value.data)["field"] == "requestState"
    assert text_of(second) == "deploy: confirmed"


MRTR_CASES = [
    # tool, arguments, declare the tasks extension, answer, result text
    ("confirm_now", {"what": "deploy"}, True, accept(approve=True), "deploy: confirmed"),
    # An optional-task tool runs synchronously for a client without the extension.
    ("ask", {"question": "Ship it?", "choices": ["yes", "no"]}, False, accept(answer="yes"), "yes"),
    # Last: should a threaded body's question crash the shared server, no case follows.
    ("confirm_threaded", {"what": "merge"}, True, accept(approve=False), "merge: not confirmed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("tool", "arguments", "declare", "answer", "expected"), MRTR_CASES
)
async def test_synchronous_call_over_multi_round_trips(
    connect: Connect,
    tool: str,
    arguments: JSONObject,
    declare: bool,
    answer: JSONObject,
    expected: str,
) -> None:
    async with connect(
        wire=MODERN_WIRE, capabilities=ELICITATION, declare_tasks_extension=declare
    ) as client:
        with anyio.fail_after(TIMEOUT):
            first = await client.call_tool(tool, arguments)
            assert first["resultType"] == "input_required"
            [(key, request)] = first["inputRequests"].items()
            assert request["method"] == ELICIT
            state = first["requestState"]
            assert isinstance(state, str)
            second = await call_again(client, tool, arguments, {key: answer}, state)
    assert second.get("resultType", "complete") == "complete"
    assert client.created_task(second) is None
    assert text_of(second) == expected


# ----------------------------------------------------------------------- scale

WAITING_TASKS = 1_000
QUICK_TASKS = 20
SCALE_TIMEOUT = 75.0
CLIENT_CONCURRENCY = 64


async def for_each(items: Iterable[T], work: Callable[[T], Awaitable[None]]) -> None:
    """Run ``work`` on every item, at most `CLIENT_CONCURRENCY` at a time."""
    limiter = anyio.CapacityLimiter(CLIENT_CONCURRENCY)

    async def run(item: T) -> None:
        async with limiter:
            await work(item)

    async with anyio.create_task_group() as tg:
        for item in items:
            tg.start_soon(run, item)


@pytest.mark.timeout(SCALE_TIMEOUT + 15)
async def test_thousand_waiting_tasks_hold_no_workers(tmp_path: Path) -> None:
    setup = server_setup(tmp_path / "scale", workers=4)
    task_ids: dict[int, str] = {}
    keys: dict[str, str] = {}
    finished: dict[str, JSONObject] = {}
    still_waiting: dict[str, str] = {}
    with anyio.fail_after(SCALE_TIMEOUT):
        async with stdio_client(
            setup, wire=MODERN_WIRE, capabilities=ELICITATION
        ) as client:

            async def submit(number: int) -> None:
                arguments = {"question": f"Question {number}?"}
                task_ids[number] = await start_task(client, "ask", arguments)

            async def until_waiting(task_id: str) -> None:
                task = await client.poll_task(task_id, until={"input_required"})
                [keys[task_id]] = task["inputRequests"]

            async def quick(number: int) -> None:
                task_id = await start_task(client, "echo", {"text": f"quick {number}"})
                finished[task_id] = await client.poll_task(task_id)

            async def check_still_waiting(task_id: str) -> None:
                still_waiting[task_id] = (await client.get_task(task_id))["status"]

            async def answer(number: int) -> None:
                task_id = task_ids[number]
                response = accept(answer=f"answer {number}")
                await client.update_task(task_id, {keys[task_id]: response})
                finished[task_id] = await client.poll_task(task_id)

            await for_each(range(WAITING_TASKS), submit)
            await for_each(task_ids.values(), until_waiting)
            await for_each(range(QUICK_TASKS), quick)
            quick_results = [text_of(t["result"]) for t in finished.values()]
            await for_each(task_ids.values(), check_still_waiting)
            await for_each(range(WAITING_TASKS), answer)
    assert sorted(quick_results) == sorted(f"quick {n}" for n in range(QUICK_TASKS))
    assert set(still_waiting.values()) == {"input_required"}
    assert len(still_waiting) == WAITING_TASKS
    for number, task_id in task_ids.items():
        task = finished[task_id]
        assert task["status"] == "completed", task
        assert text_of(task["result"]) == f"answer {number}"
