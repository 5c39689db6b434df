"""``mcp-tasks call``'s terminal: the status line, progress bar, questions, exit codes.

The command end to end (real servers, a pseudo-terminal) is in
``tests/e2e/test_call_command.py``.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import anyio
import pytest

from mcp_tasks.ops import _call

TIMEOUT = 5.0


async def test_a_question_finishes_the_status_line_and_holds_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("yes\n"))
    out = io.StringIO()
    terminal = _call.Terminal(out, live=True)
    terminal.status("[working] 1 of 3")
    async with terminal.question():
        terminal.status("[input_required] Ship it?")  # shown after the answer
        terminal.say("connection lost; reconnecting")  # likewise
        terminal.line("The task asks: Ship it?")
        answer = await terminal.prompt("  answer: ")
    assert answer == "yes"
    assert out.getvalue() == (
        "\r\x1b[K[working] 1 of 3\n"  # the status line, finished by the question
        "The task asks: Ship it?\n"
        "  answer: \n"
        "connection lost; reconnecting\n"
        "\r\x1b[K[input_required] Ship it?"  # the latest status, redrawn
    )


def test_without_a_terminal_each_status_change_is_one_line() -> None:
    out = io.StringIO()
    terminal = _call.Terminal(out, live=False)
    for line in ("[working] a", "[working] a", "[working] b", "[completed]"):
        terminal.status(line)
    assert out.getvalue() == "[working] a\n[working] b\n[completed]\n"


async def test_the_same_question_arriving_twice_is_asked_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pushed to the session and sent on tasks/result: one person, one answer.
    monkeypatch.setattr(sys, "stdin", io.StringIO("a\nyes\n"))
    out = io.StringIO()
    asker = _call.Asker(_call.Terminal(out, live=False))
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
    }
    question = {"message": "Ship it?", "requestedSchema": schema}
    answers: list[dict[str, Any]] = []

    async def ask(meta: dict[str, Any]) -> None:
        params = {**question, "_meta": meta}
        answers.append(await asker.on_request("elicitation/create", params))

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, dict[str, Any]())
            tg.start_soon(
                ask, {"io.modelcontextprotocol/related-task": {"taskId": "t"}}
            )
    expected = {"action": "accept", "content": {"answer": "yes"}}
    assert answers == [expected, expected]
    assert out.getvalue().count("The task asks: Ship it?") == 1


@pytest.mark.parametrize(
    ("status", "is_error", "code"),
    [
        ("completed", False, 0),
        ("completed", True, 1),
        ("failed", True, 1),
        ("cancelled", True, 2),
    ],
)
def test_exit_codes_say_how_the_task_ended(
    status: str, is_error: bool, code: int
) -> None:
    assert _call.exit_code(status, is_error=is_error) == code


def test_the_status_line_shows_a_progress_bar_while_the_task_works() -> None:
    working = {"status": "working", "statusMessage": "copying"}
    assert _call.status_line(working, (5, 20)) == (
        "[working] #####............... 25% copying"
    )
    assert _call.status_line(working, (3, None)) == "[working] 3 done copying"
    assert _call.status_line(working) == "[working] copying"
    assert _call.status_line({"status": "completed"}, (20, 20)) == "[completed]"


def test_progress_comes_from_numbers_only() -> None:
    assert _call._progress_of({"progress": 2, "total": 4}) == (2.0, 4.0)
    assert _call._progress_of({"progress": 2}) == (2.0, None)
    assert _call._progress_of({"progress": True, "total": 4}) is None
    assert _call._progress_of({"progress": "2"}) is None
