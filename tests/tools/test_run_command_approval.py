"""run_command asks before running a command that is not auto-approved."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio

from mcp_tasks import TaskStatus

from .support import TESTER, open_runtime

PYTHON = sys.executable
CAN_ASK: dict[str, Any] = {"clientCapabilities": {"elicitation": {"form": {}}}}


#: The interpreter is allowed but not auto-approved, so every run asks first.
ASKS_FIRST: dict[str, dict[str, Any]] = {"run_command": {"allowed": [PYTHON]}}


def writes(marker: Path) -> dict[str, Any]:
    code = f"open({str(marker)!r}, 'w').write('ran')"
    return {"command": PYTHON, "args": ["-c", code]}


async def test_an_approved_command_runs_after_the_user_says_yes(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    async with open_runtime(tmp_path, ASKS_FIRST) as runtime:
        task = await runtime.submit(
            TESTER, "run_command", writes(marker), request_meta=CAN_ASK
        )
        with anyio.fail_after(5):
            waiting = await runtime.wait_settled(TESTER, task.task_id)
        assert waiting.status is TaskStatus.INPUT_REQUIRED
        assert waiting.status_message is not None
        assert waiting.status_message.startswith(f"Run `{PYTHON} -c")
        assert not marker.exists()  # nothing ran before the answer
        answer = {"action": "accept", "content": {"approve": True}}
        await runtime.answer(TESTER, task.task_id, {"approve": answer})
        with anyio.fail_after(10):
            done = await runtime.wait_terminal(TESTER, task.task_id)
    assert done.outcome is not None
    assert done.outcome.result is not None
    assert done.outcome.result["isError"] is False
    assert marker.read_text() == "ran"


async def test_a_refused_command_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    async with open_runtime(tmp_path, ASKS_FIRST) as runtime:
        task = await runtime.submit(
            TESTER, "run_command", writes(marker), request_meta=CAN_ASK
        )
        with anyio.fail_after(5):
            await runtime.wait_settled(TESTER, task.task_id)
        await runtime.answer(TESTER, task.task_id, {"approve": {"action": "decline"}})
        with anyio.fail_after(5):
            done = await runtime.wait_terminal(TESTER, task.task_id)
    assert done.outcome is not None
    assert done.outcome.result is not None
    assert done.outcome.result["isError"] is True
    assert "did not approve" in done.outcome.result["content"][0]["text"]
    assert not marker.exists()


async def test_without_a_way_to_ask_the_command_fails_instead_of_waiting(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    async with open_runtime(tmp_path, ASKS_FIRST) as runtime:
        task = await runtime.submit(TESTER, "run_command", writes(marker))
        with anyio.fail_after(5):
            done = await runtime.wait_terminal(TESTER, task.task_id)
    assert done.status is TaskStatus.FAILED
    assert done.outcome is not None
    assert done.outcome.error is not None
    assert done.outcome.error["code"] == -32021
    assert not marker.exists()
