"""The operator commands: ``mcp-tasks tasks list|show|cancel|answer|retry``, ``stats``, ``top``.

Each opens the journal (``--db``: a SQLite path or a database URL) alongside
the running servers and reads or acts through it (see `_operator`). Output is
a `rich` table for people, or JSON with ``--json`` (one document on stdout).

Exit codes: 0 done (and ``top`` left with Ctrl-C); 1 refused (no such task,
already finished, not failed, an answer that does not fit, a key that is not
an open question); 2 a bad command line or config; 3 the journal cannot be
opened or read; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import anyio

from mcp_tasks._config import Settings
from mcp_tasks._exceptions import JournalError, McpTasksError
from mcp_tasks._model import TaskStatus
from mcp_tasks._toolapi import ToolSpec
from mcp_tasks._toolloader import default_tools_path, load_tools
from mcp_tasks.engine import TaskRuntime
from mcp_tasks.ops import _operator

EXIT_REFUSED: Final = 1
#: Interrupted by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED: Final = 130
STATUSES: Final = tuple(s.value for s in TaskStatus)

#: What a command does once the journal is open; returns the exit code.
Action = Callable[[TaskRuntime, argparse.Namespace], Awaitable[int]]


def add_commands(commands: Any, default_db: str) -> None:
    """Register ``tasks``, ``stats`` and ``top`` on the ``mcp-tasks`` subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", default=default_db, help="journal: a file path or database URL"
    )
    common.add_argument("--config", type=Path, help="TOML config file (as serve's)")
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print JSON")

    tasks = commands.add_parser("tasks", help="list, inspect and act on tasks")
    verbs = tasks.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser(
        "list", parents=[common, json_flag], help="tasks, newest first"
    )
    listing.add_argument("--client", help="only this client's tasks")
    listing.add_argument(
        "--status", action="append", choices=STATUSES, default=[], help="repeatable"
    )
    listing.add_argument("--limit", type=_positive_int, default=50)
    listing.set_defaults(action=_list)
    show = verbs.add_parser(
        "show", parents=[common, json_flag], help="a task, its history and questions"
    )
    show.add_argument("task_id", metavar="TASK_ID")
    show.set_defaults(action=_show)
    cancel = verbs.add_parser(
        "cancel", parents=[common, json_flag], help="cancel a task (stops its run)"
    )
    cancel.add_argument("task_id", metavar="TASK_ID")
    cancel.set_defaults(action=_cancel)
    answer = verbs.add_parser(
        "answer", parents=[common, json_flag], help="answer a task's open question"
    )
    answer.add_argument("task_id", metavar="TASK_ID")
    answer.add_argument("key", metavar="KEY", help="the question's key (tasks show)")
    answer.add_argument(
        "answer",
        metavar="ANSWER",
        type=_answer_argument,
        help='a JSON object, e.g. \'{"action": "accept"}\'',
    )
    answer.set_defaults(action=_answer)
    retry = verbs.add_parser(
        "retry",
        parents=[common, json_flag],
        help="queue a failed task again as a new attempt",
    )
    retry.add_argument("task_id", metavar="TASK_ID")
    retry.add_argument(
        "--tools",
        type=Path,
        action="append",
        help="tool modules, as given to serve (their retry policy is checked)",
    )
    retry.set_defaults(action=_retry, needs_tools=True)

    stats = commands.add_parser(
        "stats", parents=[common, json_flag], help="per-client queues and processes"
    )
    stats.set_defaults(action=_stats)
    top = commands.add_parser("top", parents=[common], help="stats, refreshed live")
    top.add_argument(
        "--interval", type=_positive_float, default=1.0, help="seconds (default 1)"
    )
    top.add_argument(
        "-n", "--count", type=int, default=0, help="stop after N refreshes (0: never)"
    )
    top.set_defaults(action=_top)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _answer_argument(text: str) -> dict[str, Any]:
    try:
        return _operator.parse_answer(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    """Run an operator command; return its exit code.

    Raises:
        ConfigurationError: the config file or tool modules are wrong.
        JournalError: the journal cannot be opened.
    """
    _operator.require_existing(args.db)
    settings = Settings.load(args.config)
    tools: dict[str, ToolSpec] = {}
    if getattr(args, "needs_tools", False):
        tools = load_tools(args.tools or [default_tools_path()], settings.tool_config)
    try:
        return anyio.run(_run, args, settings, tools, backend="asyncio")
    except KeyboardInterrupt:
        # Ctrl-C is how one leaves `top`; elsewhere it interrupted the command.
        return 0 if args.action is _top else EXIT_INTERRUPTED


async def _run(
    args: argparse.Namespace, settings: Settings, tools: dict[str, ToolSpec]
) -> int:
    action: Action = args.action
    async with _operator.operator_runtime(args.db, settings, tools) as runtime:
        try:
            return await action(runtime, args)
        except JournalError:
            raise  # not a refusal: the journal failed (exit 3)
        except McpTasksError as exc:
            # Refusals are the operator's business, not bugs: one line each.
            print(f"mcp-tasks: {exc}", file=sys.stderr)
            return EXIT_REFUSED


def _print(args: argparse.Namespace, data: Any, human: Callable[[], Any]) -> None:
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
        sys.stdout.write("\n")
        return
    from rich.console import Console

    Console(soft_wrap=False).print(human())


async def _list(runtime: TaskRuntime, args: argparse.Namespace) -> int:
    from mcp_tasks.ops._render import tasks_table

    rows = await _operator.list_tasks(runtime, args.client, args.status, args.limit)
    _print(args, rows, lambda: tasks_table(rows))
    return 0


async def _show(runtime: TaskRuntime, args: argparse.Namespace) -> int:
    from mcp_tasks.ops._render import task_detail

    data = await _operator.show_task(runtime, args.task_id)
    _print(args, data, lambda: task_detail(data))
    return 0


async def _cancel(runtime: TaskRuntime, args: argparse.Namespace) -> int:
    task = await runtime.cancel(
        _operator.OPERATOR, args.task_id, reason=_operator.CANCEL_REASON
    )
    data = _operator.task_json(task)
    _print(args, data, lambda: f"task {task.task_id}: {task.status.value}")
    return 0


async def _answer(runtime: TaskRuntime, args: argparse.Namespace) -> int:
    receipt = await runtime.answer(
        _operator.OPERATOR, args.task_id, {args.key: args.answer}
    )
    data = {
        "accepted": receipt.accepted,
        "ignored": receipt.ignored,
        "resumed": receipt.resumed,
    }
    if not receipt.accepted:
        print(
            f"mcp-tasks: task {args.task_id} has no open question {args.key!r} "
            "(see tasks show)",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    resumed = "; the task resumes" if receipt.resumed else ""
    _print(args, data, lambda: f"task {args.task_id}: answered {args.key}{resumed}")
    return 0


async def _retry(runtime: TaskRuntime, args: argparse.Namespace) -> int:
    task = await runtime.retry(
        _operator.OPERATOR, args.task_id, reason=_operator.RETRY_REASON
    )
    data = _operator.task_json(task)
    _print(args, data, lambda: f"task {task.task_id}: queued again (a new attempt)")
    return 0


async def _stats(runtime: TaskRuntime, args: argparse.Namespace) -> int:
    from mcp_tasks.ops._render import stats_view

    data = await _operator.stats(runtime)
    _print(args, data, lambda: stats_view(data))
    return 0


async def _top(runtime: TaskRuntime, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from mcp_tasks.ops._render import stats_view

    console = Console()
    shown = 0
    view = stats_view(await _operator.stats(runtime))
    if not console.is_terminal:
        # Piped: one snapshot after another (no cursor movement).
        while True:
            console.print(view)
            shown += 1
            if args.count and shown >= args.count:
                return 0
            await anyio.sleep(args.interval)
            view = stats_view(await _operator.stats(runtime))
    with Live(view, console=console, auto_refresh=False, screen=False) as live:
        while True:
            live.update(view, refresh=True)
            shown += 1
            if args.count and shown >= args.count:
                return 0
            await anyio.sleep(args.interval)
            view = stats_view(await _operator.stats(runtime))
