"""The examples: ``custom_server.py`` serves its tool; ``client.py``'s terminal.

``custom_server.py`` runs as a stdio subprocess in ``tmp_path`` (where it
creates its journal), driven by the project's own `TaskClient`. The parts of
``client.py`` that decide what a person sees (the status line, questions, exit
codes) are checked here in process; the whole client runs against real servers
in ``tests/e2e/test_example_client.py``.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_tasks import Settings, load_tools
from mcp_tasks.client import TaskClient

from .support import TOOLS_DIR

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_server.py"
TIMEOUT = 15.0


async def test_custom_server_reports_progress_and_can_be_cancelled(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with TaskClient.stdio(
            [sys.executable, str(EXAMPLE)], cwd=tmp_path
        ) as client:
            listed = await client.list_tools()
            assert [t["name"] for t in listed["tools"]] == ["count_slowly"]
            created = await client.call_tool(
                "count_slowly", {}, task={"ttl": 60_000}, progress_token="p1"
            )
            task = client.created_task(created)
            assert task is not None
            progress = await client.next_notification("notifications/progress")
            assert progress["params"]["progress"] == 1
            assert progress["params"]["total"] == 30
            await client.cancel_task(task["taskId"])
            ended = await client.poll_task(task["taskId"], interval=0.05)
            assert ended["status"] == "cancelled"
    assert (tmp_path / "custom-server.db").exists()


def test_example_config_enables_run_command() -> None:
    settings = Settings.load(EXAMPLE.parent / "config.toml")
    tools = load_tools([TOOLS_DIR], settings.tool_config)
    assert "run_command" in tools
    table = settings.tool_config["run_command"]
    assert table["allowed"] == ["make", "pytest", "git"]
    assert table["env"] == {"CI": "1"}


# ------------------------------------------------------- examples/client.py


def example_client() -> Any:
    """``examples/client.py``, loaded by path (examples are not a package)."""
    name = "mcp_tasks_example_client"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, EXAMPLE.parent / "client.py"
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


async def test_a_question_finishes_the_status_line_and_holds_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("yes\n"))
    out = io.StringIO()
    terminal = example_client().Terminal(out, live=True)
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
    terminal = example_client().Terminal(out, live=False)
    for line in ("[working] a", "[working] a", "[working] b", "[completed]"):
        terminal.status(line)
    assert out.getvalue() == "[working] a\n[working] b\n[completed]\n"


async def test_the_same_question_arriving_twice_is_asked_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pushed to the session and sent on tasks/result: one person, one answer.
    monkeypatch.setattr(sys, "stdin", io.StringIO("a\nyes\n"))
    out = io.StringIO()
    client = example_client()
    asker = client.Asker(client.Terminal(out, live=False))
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
    assert example_client().exit_code(status, is_error=is_error) == code
