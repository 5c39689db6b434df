"""``mcp-tasks call``: call a tool as a durable task, follow it, answer its questions.

Usage::

    mcp-tasks call [OPTIONS] URL TOOL [ARGS]
    mcp-tasks call [OPTIONS] --attach TASK_ID URL
    mcp-tasks call [OPTIONS] --stdio "mcp-tasks serve --db tasks.db" TOOL [ARGS]
    mcp-tasks call [OPTIONS] --stdio "mcp-tasks serve --db tasks.db" --attach TASK_ID

OPTIONS: ``--wire 2025-11-25|2026-07-28``, ``--token TOKEN`` (HTTP servers with
``--tokens``), ``--reconnect-seconds SECONDS`` (default 60).

``URL`` is a Streamable HTTP endpoint such as ``http://127.0.0.1:8765/mcp``; ARGS
is a JSON object. The command prints the task id, polls ``tasks/get`` at the
server's suggested interval, shows the status with a progress bar when the
tool's progress reaches the client (2025-11-25 relays it; the 2026-07-28
extension sends task progress nowhere, so there the status message alone),
redrawn in place on a terminal (one line per change otherwise), and, when the
task needs input, asks you. On 2025-11-25 the server
pushes the question to the session that created the task, and a session that
attached later reads it from ``tasks/result``; on 2026-07-28 the question is in
``tasks/get`` and the answer goes back with ``tasks/update``. ``--attach``
follows a task started earlier (by this command or any other client) by its id.

If the connection is lost (the server restarts, say), it reconnects with
backoff for up to ``--reconnect-seconds`` and goes on following the same
task. Over HTTP that is the same URL. With ``--stdio`` the server is the
command's own child process, so "reconnecting" starts it again: the task
survives only if the command names the same journal (``--db``), and then it
resumes as its tool's recovery policy says (a ``recovery="fail"`` tool, such
as ``run_command``, ends ``failed``).

Exit codes: 0 the task completed; 1 it failed (a tool error included);
2 it was cancelled; 3 no outcome: bad usage, the server refused the call or
does not know the task id, or the connection could not be (re-)established.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import anyio
import anyio.to_thread
import httpx2
from anyio.abc import TaskGroup

from mcp_tasks.client import ConnectionClosedError, RpcError, TaskClient

CAPABILITIES: dict[str, Any] = {"elicitation": {"form": {}, "url": {}}, "sampling": {}}
TERMINAL = {"completed", "failed", "cancelled"}

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 2
EXIT_NO_OUTCOME = 3

#: Reconnect backoff: the first delay, doubled per attempt up to the cap.
BACKOFF_FIRST_SECONDS = 0.25
BACKOFF_MAX_SECONDS = 4.0

#: What a lost connection looks like, from either transport.
CONNECTION_ERRORS = (
    ConnectionClosedError,
    httpx2.TransportError,
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


class ConnectionLost(Exception):
    """The connection ended; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def connection_lost(error: BaseException) -> ConnectionLost | None:
    """``error`` as `ConnectionLost` if it (every part of a group) is a connection error."""
    if isinstance(error, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", error)
        parts = [connection_lost(inner) for inner in group.exceptions]
        lost = [part for part in parts if part is not None]
        return lost[0] if lost and len(lost) == len(parts) else None
    if isinstance(error, CONNECTION_ERRORS):
        return ConnectionLost(str(error) or type(error).__name__)
    return None


# ------------------------------------------------------------------ terminal


class Terminal:
    """Everything the client writes: the status line, messages and questions.

    On a terminal the status line is redrawn in place. Before a question it is
    finished with a newline, so the prompt never lands on it, and while a
    question is open nothing else is written: status changes are held (the
    latest is shown after the answer) and so are messages.
    """

    def __init__(self, out: TextIO | None = None, *, live: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self._status: str | None = None
        self._line_open = False
        self._question = anyio.Lock()
        self._held: list[str] = []
        self._held_status = False

    def status(self, line: str) -> None:
        """Show the task's status (once per change)."""
        if line == self._status:
            return
        self._status = line
        if self._question.locked():
            self._held_status = True
        elif self.live:
            self._write(f"\r\x1b[K{line}")
            self._line_open = True
        else:
            self._write(f"{line}\n")

    def say(self, text: str) -> None:
        """Print a message on lines of its own."""
        if self._question.locked():
            self._held.append(text)
            return
        self._end_line()
        self._write(f"{text}\n")

    @asynccontextmanager
    async def question(self) -> AsyncGenerator[None]:
        """Hold the terminal for one question (its lines and prompts)."""
        async with self._question:
            self._end_line()
            try:
                yield
            finally:
                self._end_line()
        held, self._held = self._held, []
        for text in held:
            self.say(text)
        if self._held_status and self._status is not None:
            self._held_status = False
            line, self._status = self._status, None
            self.status(line)

    def line(self, text: str) -> None:
        """Print a line of the open question."""
        self._write(f"{text}\n")

    async def prompt(self, text: str) -> str:
        """Ask for one line of input (inside `question`)."""
        self._write(text)
        self._line_open = True
        # Abandoned if the question is withdrawn; the line typed then is lost.
        reply = await anyio.to_thread.run_sync(
            sys.stdin.readline, abandon_on_cancel=True
        )
        # A terminal echoes the Enter; piped answers leave the line open.
        self._line_open = not sys.stdin.isatty()
        self._end_line()
        if not reply:
            raise EOFError("no more input")
        return reply.strip()

    def _end_line(self) -> None:
        if self._line_open:
            self._write("\n")
            self._line_open = False

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


# ----------------------------------------------------------------- questions


@dataclass
class _Shared:
    done: anyio.Event = field(default_factory=anyio.Event)
    answer: dict[str, Any] | None = None


class Asker:
    """Answers the server's questions by asking the person at the terminal.

    The same question can arrive twice at once (pushed to the session and on
    ``tasks/result``): the person is asked once, and both get that answer.
    """

    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal
        self._open: dict[str, _Shared] = {}

    async def on_request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Server-to-client requests (2025-11-25 pushes and ``tasks/result``)."""
        if method == "ping":
            return {}
        return await self.answer(method, params)

    async def answer(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The answer to one question, asking once per identical open question."""
        key = json.dumps(
            [method, {k: v for k, v in params.items() if k != "_meta"}],
            sort_keys=True,
            default=str,
        )
        while (shared := self._open.get(key)) is not None:
            await shared.done.wait()
            if shared.answer is not None:
                return shared.answer
        shared = self._open[key] = _Shared()
        try:
            async with self.terminal.question():
                shared.answer = await self._ask(method, params)
            return shared.answer
        finally:
            del self._open[key]
            shared.done.set()

    async def _ask(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        terminal = self.terminal
        if method == "roots/list":
            return {"roots": []}
        if method == "sampling/createMessage":
            terminal.line("The task asks a model (you play it):")
            for message in params.get("messages", []):
                terminal.line(
                    f"  {message['role']}: {message['content'].get('text', '')}"
                )
            text = await terminal.prompt("  your reply> ")
            content = {"type": "text", "text": text}
            return {"role": "assistant", "content": content, "model": "human"}
        terminal.line(f"The task asks: {params.get('message', '')}")
        if params.get("mode") == "url":
            terminal.line(f"  open: {params.get('url')}")
        choice = (
            await terminal.prompt("  (a)ccept, (d)ecline or (c)ancel? [a] ")
        ).lower()
        if choice.startswith("d"):
            return {"action": "decline"}
        if choice.startswith("c"):
            return {"action": "cancel"}
        if params.get("mode") == "url":
            return {"action": "accept"}
        return {
            "action": "accept",
            "content": await self._fill_form(params["requestedSchema"]),
        }

    async def _fill_form(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        """Ask for each field of a flat elicitation schema."""
        content: dict[str, Any] = {}
        required = set(schema.get("required", []))
        for name, spec in schema.get("properties", {}).items():
            label = spec.get("title") or name
            options = spec.get("enum")
            hint = f" {options}" if options else ""
            raw = await self.terminal.prompt(f"  {label}{hint}: ")
            if not raw and name not in required:
                continue
            kind = spec.get("type")
            if kind == "boolean":
                content[name] = raw.lower() in ("y", "yes", "true", "1")
            elif kind in ("number", "integer"):
                content[name] = int(raw) if kind == "integer" else float(raw)
            else:
                content[name] = raw
        return content


# ------------------------------------------------------------------ following


class Follower:
    """Follows one task to its end, across reconnects, and reports the outcome."""

    def __init__(self, terminal: Terminal, asker: Asker, task_id: str | None) -> None:
        self.terminal = terminal
        self.asker = asker
        self.task_id = task_id
        self.answered: set[str] = set()
        #: The latest progress reported (notifications, or the task itself).
        self.progress: tuple[float, float | None] | None = None

    async def follow(self, client: TaskClient, *, created_here: bool) -> int:
        """Poll until the task ends; print its outcome; return the exit code.

        ``created_here``: this connection created the task, so on 2025-11-25
        the server pushes its questions here; otherwise they are read from
        ``tasks/result`` while the task waits for input.
        """
        task: dict[str, Any] | None = None
        error: RpcError | None = None
        async with anyio.create_task_group() as background:
            try:
                task = await self._poll(client, background, reading=created_here)
            except RpcError as exc:  # raised bare, not wrapped in a group
                error = exc
            background.cancel_scope.cancel()  # stop reading questions
        if error is not None:
            raise error
        assert task is not None
        return await self.outcome(client, task)

    async def _poll(
        self, client: TaskClient, background: TaskGroup, *, reading: bool
    ) -> dict[str, Any]:
        assert self.task_id is not None
        shown = len(client.notifications)
        reading = reading or client.wire != "2025-11-25"
        while True:
            task = await client.get_task(self.task_id)
            for note in client.notifications[shown:]:
                if note["method"] == "notifications/progress":
                    params = cast("dict[str, Any]", note.get("params", {}))
                    self.progress = _progress_of(params)
            shown = len(client.notifications)
            self.progress = _progress_of(task) or self.progress
            self.terminal.status(status_line(task, self.progress))
            if task["status"] in TERMINAL:
                return task
            if task["status"] == "input_required" and not reading:
                reading = True
                background.start_soon(read_questions, client, self.task_id)
            await self.answer_input_requests(client, task)
            await anyio.sleep(poll_interval(task))

    async def answer_input_requests(
        self, client: TaskClient, task: Mapping[str, Any]
    ) -> None:
        """2026-07-28: answer each question listed by ``tasks/get`` once."""
        requests = cast("dict[str, dict[str, Any]]", task.get("inputRequests") or {})
        fresh = {k: r for k, r in requests.items() if k not in self.answered}
        if not fresh:
            return
        responses = {
            k: await self.asker.answer(r["method"], r["params"])
            for k, r in fresh.items()
        }
        self.answered.update(responses)
        try:
            await client.update_task(task["taskId"], responses)
        except ConnectionClosedError:
            self.answered.difference_update(responses)
            raise
        except RpcError as exc:
            self.terminal.say(f"  answer refused: {exc.message}")
            self.answered.difference_update(responses)

    async def outcome(self, client: TaskClient, task: Mapping[str, Any]) -> int:
        """Print how the task ended; its exit code."""
        if client.wire == "2025-11-25":
            try:
                result = await client.task_result(task["taskId"])
            except ConnectionClosedError:
                raise
            except RpcError as exc:
                self.terminal.say(f"error {exc.code}: {exc.message}")
                return exit_code(task["status"], is_error=True)
            print_result(self.terminal, result)
            return exit_code(task["status"], is_error=bool(result.get("isError")))
        if "result" in task:
            print_result(self.terminal, task["result"])
            return exit_code(
                task["status"], is_error=bool(task["result"].get("isError"))
            )
        if "error" in task:
            error = task["error"]
            self.terminal.say(f"error {error.get('code')}: {error.get('message')}")
        return exit_code(task["status"], is_error=True)


async def read_questions(client: TaskClient, task_id: str) -> None:
    """2025-11-25: hold ``tasks/result`` open, where the server asks this session.

    Its answer (the outcome) is fetched again at the end; an error here is the
    task's, or the connection's, which the polling loop reports.
    """
    try:
        await client.task_result(task_id)
    except RpcError:
        pass


#: Width of the progress bar, in characters.
BAR_WIDTH = 20


def progress_bar(progress: float, total: float | None) -> str:
    """``progress`` of ``total`` as a bar and a percentage (a count without a total)."""
    if not total or total <= 0:
        return f"{progress:g} done"
    share = min(1.0, max(0.0, progress / total))
    filled = round(share * BAR_WIDTH)
    return f"{'#' * filled}{'.' * (BAR_WIDTH - filled)} {share:.0%}"


def status_line(
    task: Mapping[str, Any], progress: tuple[float, float | None] | None = None
) -> str:
    """The task's status, its progress bar while it works, and its message."""
    parts = [f"[{task['status']}]"]
    if progress is not None and task["status"] not in TERMINAL:
        parts.append(progress_bar(*progress))
    parts.append(str(task.get("statusMessage") or ""))
    return " ".join(parts).rstrip()


def _progress_of(data: Mapping[str, Any]) -> tuple[float, float | None] | None:
    """``(progress, total)`` from a progress notification's params, if numbers."""
    progress, total = data.get("progress"), data.get("total")
    if not isinstance(progress, int | float) or isinstance(progress, bool):
        return None
    if not isinstance(total, int | float) or isinstance(total, bool):
        total = None
    return float(progress), None if total is None else float(total)


def poll_interval(task: Mapping[str, Any]) -> float:
    milliseconds = task.get("pollInterval", task.get("pollIntervalMs", 1000))
    return float(milliseconds) / 1000


def exit_code(status: str, *, is_error: bool) -> int:
    """0 completed, 1 failed (or a completed tool error), 2 cancelled."""
    if status == "cancelled":
        return EXIT_CANCELLED
    if status == "failed" or is_error:
        return EXIT_FAILED
    return EXIT_COMPLETED


def print_result(terminal: Terminal, result: Mapping[str, Any]) -> None:
    for block in result.get("content", []):
        terminal.say(block.get("text", json.dumps(block)))
    if result.get("isError"):
        terminal.say("(the tool reported an error)")


# ---------------------------------------------------------------- connecting


@asynccontextmanager
async def connect(args: argparse.Namespace, asker: Asker) -> AsyncGenerator[TaskClient]:
    if args.stdio:
        async with TaskClient.stdio(
            shlex.split(args.stdio),
            wire=args.wire,
            capabilities=CAPABILITIES,
            on_request=asker.on_request,
        ) as client:
            yield client
    else:
        async with TaskClient.http(
            args.url,
            token=args.token,
            wire=args.wire,
            capabilities=CAPABILITIES,
            on_request=asker.on_request,
        ) as client:
            yield client


class Backoff:
    """Delays between reconnect attempts, until a deadline."""

    def __init__(self, budget_seconds: float) -> None:
        self.budget_seconds = budget_seconds
        self._delay = BACKOFF_FIRST_SECONDS
        self._deadline: float | None = None

    def reset(self) -> None:
        """Connected: start from the first delay next time."""
        self._delay = BACKOFF_FIRST_SECONDS
        self._deadline = None

    def next_delay(self) -> float | None:
        """The next delay, or None once the reconnect budget is spent."""
        now = anyio.current_time()
        if self._deadline is None:
            self._deadline = now + self.budget_seconds
        if now >= self._deadline:
            return None
        delay = min(self._delay, self._deadline - now)
        self._delay = min(self._delay * 2, BACKOFF_MAX_SECONDS)
        return delay


class Session:
    """One run of the client: start or attach, follow, reconnect when lost."""

    def __init__(self, args: argparse.Namespace, terminal: Terminal) -> None:
        self.args = args
        self.terminal = terminal
        self.asker = Asker(terminal)
        self.follower = Follower(terminal, self.asker, args.attach)
        self.connected_once = False

    async def run(self) -> int:
        backoff = Backoff(self.args.reconnect_seconds)
        while True:
            try:
                return await self.connection()
            except Exception as error:
                lost = connection_lost(error)
                if lost is None:
                    raise
            if not self.connected_once:
                self.terminal.say(f"cannot connect: {lost.reason}")
                return EXIT_NO_OUTCOME
            if self.follower.task_id is None:
                self.terminal.say(
                    f"connection lost during the call ({lost.reason}); "
                    "whether the server accepted it is unknown"
                )
                return EXIT_NO_OUTCOME
            delay = backoff.next_delay()
            if delay is None:
                self.terminal.say(
                    f"connection lost ({lost.reason}); gave up after "
                    f"{self.args.reconnect_seconds:g} s. Follow the task later with "
                    f"--attach {self.follower.task_id}"
                )
                return EXIT_NO_OUTCOME
            self.terminal.say(
                f"connection lost ({lost.reason}); reconnecting in {delay:.2g} s"
            )
            await anyio.sleep(delay)

    async def connection(self) -> int:
        """One connection: call the tool (the first time), then follow the task."""
        async with connect(self.args, self.asker) as client:
            if self.connected_once:
                self.terminal.say(
                    f"reconnected; following task {self.follower.task_id}"
                )
            self.connected_once = True
            created_here = False
            if self.follower.task_id is None:
                ended = await self.call(client)
                if ended is not None:
                    return ended
                created_here = True
            try:
                return await self.follower.follow(client, created_here=created_here)
            except ConnectionClosedError:
                raise
            except RpcError as exc:
                self.terminal.say(f"error {exc.code}: {exc.message}")
                return EXIT_NO_OUTCOME

    async def call(self, client: TaskClient) -> int | None:
        """Call the tool as a task; None once there is a task to follow.

        Otherwise the exit code: the call was refused, or answered at once.
        """
        task = {"ttl": 3_600_000} if client.wire == "2025-11-25" else None
        try:
            created = await client.call_tool(
                self.args.tool, self.args.arguments, task=task, progress_token="call"
            )
        except ConnectionClosedError:
            raise
        except RpcError as exc:
            self.terminal.say(f"error {exc.code}: {exc.message}")
            return EXIT_NO_OUTCOME
        handle = client.created_task(created)
        if handle is None:
            print_result(self.terminal, created)  # the server answered right away
            return exit_code("completed", is_error=bool(created.get("isError")))
        task_id = str(handle["taskId"])
        self.follower.task_id = task_id
        self.terminal.say(f"task {task_id} (follow it again with --attach {task_id})")
        return None


# ---------------------------------------------------------------- arguments


def add_command(commands: Any) -> None:
    """Register ``call`` on the ``mcp-tasks`` subparsers (usage errors exit 3)."""
    parser = commands.add_parser(
        "call",
        usage_exit=EXIT_NO_OUTCOME,
        help="call a tool as a task and follow it (a client for people)",
        description="Call a tool as a durable task, or follow one by id.",
        epilog="Exit codes: 0 completed, 1 failed, 2 cancelled, 3 no outcome.",
    )
    parser.add_argument(
        "--wire", default="2025-11-25", choices=["2025-11-25", "2026-07-28"]
    )
    parser.add_argument("--token", help="bearer token (HTTP servers with --tokens)")
    parser.add_argument("--stdio", metavar="COMMAND", help="spawn a stdio server")
    parser.add_argument("--attach", metavar="TASK_ID", help="follow an existing task")
    parser.add_argument(
        "--reconnect-seconds",
        type=float,
        default=60.0,
        help="how long to keep reconnecting after the connection is lost",
    )
    parser.add_argument("target", nargs="*", help="URL, TOOL and ARGS (JSON)")
    parser.set_defaults(call_parser=parser)


def with_extra_targets(
    args: argparse.Namespace, extra: list[str]
) -> argparse.Namespace:
    """Positionals argparse left over (after an option) join ``target``; exits 3 on others."""
    parser: argparse.ArgumentParser = args.call_parser
    unknown = [arg for arg in extra if arg.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.target = [*args.target, *extra]
    return args


def _check(args: argparse.Namespace) -> argparse.Namespace:
    """Split ``target`` into URL, TOOL and ARGS; exits 3 when it is wrong."""
    parser: argparse.ArgumentParser = args.call_parser
    target: list[str] = list(args.target)
    args.url = None if args.stdio else (target.pop(0) if target else None)
    if args.url is None and not args.stdio:
        parser.error("give the server's URL, or --stdio COMMAND")
    if args.attach is not None:
        if target:
            parser.error("--attach follows a task: no TOOL or ARGS")
        return args
    if not 1 <= len(target) <= 2:
        parser.error("give TOOL [ARGS], or --attach TASK_ID")
    args.tool = target[0]
    try:
        arguments: object = json.loads(target[1]) if len(target) == 2 else {}
    except json.JSONDecodeError as exc:
        parser.error(f"ARGS is not JSON: {exc}")
    if not isinstance(arguments, dict):
        parser.error("ARGS must be a JSON object")
    args.arguments = arguments
    return args


async def main(args: argparse.Namespace) -> int:
    """Call or attach, follow the task to its end; the exit code."""
    return await Session(args, Terminal()).run()


def run(args: argparse.Namespace) -> int:
    """``mcp-tasks call``: the exit code (see the module docstring)."""
    return anyio.run(main, _check(args), backend="asyncio")
