"""Call a tool as a durable task, follow it, and answer its questions in the terminal.

Usage::

    python examples/client.py [--wire 2025-11-25|2026-07-28] [--token TOKEN] URL TOOL [ARGS]
    python examples/client.py --stdio "mcp-tasks serve" TOOL [ARGS]

``URL`` is a Streamable HTTP endpoint such as ``http://127.0.0.1:8765/mcp``; ARGS
is a JSON object. The client polls ``tasks/get`` at the server's suggested
interval, prints progress and status messages, and when the task needs input it
asks you: on 2025-11-25 the server pushes the question to this session (this
client never calls ``tasks/result`` before the end, like most clients); on
2026-07-28 the question is in ``tasks/get`` and the answer goes back with
``tasks/update``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import anyio.to_thread

from mcp_tasks.client import RpcError, TaskClient

CAPABILITIES: dict[str, Any] = {"elicitation": {"form": {}, "url": {}}, "sampling": {}}
TERMINAL = {"completed", "failed", "cancelled"}


async def ask_user(prompt: str) -> str:
    """Read a line from the terminal without blocking the event loop."""
    return (await anyio.to_thread.run_sync(input, prompt)).strip()


async def answer(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Answer one server-to-client question by asking the person at the terminal."""
    if method == "sampling/createMessage":
        print("\nThe task asks a model (you play it):")
        for message in params.get("messages", []):
            print(f"  {message['role']}: {message['content'].get('text', '')}")
        text = await ask_user("  your reply> ")
        content = {"type": "text", "text": text}
        return {"role": "assistant", "content": content, "model": "human"}
    if method == "roots/list":
        return {"roots": []}
    print(f"\nThe task asks: {params.get('message', '')}")
    if params.get("mode") == "url":
        print(f"  open: {params.get('url')}")
    choice = (await ask_user("  (a)ccept, (d)ecline or (c)ancel? [a] ")).lower()
    if choice.startswith("d"):
        return {"action": "decline"}
    if choice.startswith("c"):
        return {"action": "cancel"}
    if params.get("mode") == "url":
        return {"action": "accept"}
    return {"action": "accept", "content": await fill_form(params["requestedSchema"])}


async def fill_form(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Ask for each field of a flat elicitation schema."""
    content: dict[str, Any] = {}
    required = set(schema.get("required", []))
    for name, field in schema.get("properties", {}).items():
        label = field.get("title") or name
        options = field.get("enum")
        hint = f" {options}" if options else ""
        raw = await ask_user(f"  {label}{hint}: ")
        if not raw and name not in required:
            continue
        kind = field.get("type")
        if kind == "boolean":
            content[name] = raw.lower() in ("y", "yes", "true", "1")
        elif kind in ("number", "integer"):
            content[name] = int(raw) if kind == "integer" else float(raw)
        else:
            content[name] = raw
    return content


async def on_request(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Server-to-client requests (2025-11-25): questions pushed to this session."""
    if method == "ping":
        return {}
    return await answer(method, params)


def print_result(result: Mapping[str, Any]) -> None:
    for block in result.get("content", []):
        print(block.get("text", json.dumps(block)))
    if result.get("isError"):
        print("(the tool reported an error)")


class Follower:
    """Polls one task until it ends, printing what happens and answering questions."""

    def __init__(self, client: TaskClient) -> None:
        self.client = client
        self.lines: list[str] = []
        self.answered: set[str] = set()
        self.notes_shown = 0

    async def run(self, task: dict[str, Any]) -> None:
        while True:
            self.report(task)
            if task["status"] in TERMINAL:
                break
            await self.answer_input_requests(task)
            interval = task.get("pollInterval", task.get("pollIntervalMs", 1000)) / 1000
            await anyio.sleep(interval)
            task = await self.client.get_task(task["taskId"])
        await self.print_outcome(task)

    def report(self, task: Mapping[str, Any]) -> None:
        line = f"[{task['status']}] {task.get('statusMessage', '')}".rstrip()
        if not self.lines or line != self.lines[-1]:
            print(line)
            self.lines.append(line)
        for note in self.client.notifications[self.notes_shown :]:
            if note["method"] == "notifications/progress":
                params = cast("dict[str, Any]", note.get("params", {}))
                print(f"  progress {params.get('progress')} of {params.get('total')}")
        self.notes_shown = len(self.client.notifications)

    async def answer_input_requests(self, task: Mapping[str, Any]) -> None:
        # 2026-07-28: open questions are listed on every poll; answer each once.
        requests = cast("dict[str, dict[str, Any]]", task.get("inputRequests") or {})
        fresh = {k: r for k, r in requests.items() if k not in self.answered}
        if not fresh:
            return
        responses = {
            k: await answer(r["method"], r["params"]) for k, r in fresh.items()
        }
        self.answered.update(responses)
        try:
            await self.client.update_task(task["taskId"], responses)
        except RpcError as exc:
            print(f"  answer refused: {exc.message}")
            self.answered.difference_update(responses)

    async def print_outcome(self, task: Mapping[str, Any]) -> None:
        if self.client.wire == "2025-11-25":
            try:
                print_result(await self.client.task_result(task["taskId"]))
            except RpcError as exc:
                print(f"error {exc.code}: {exc.message}")
        elif "result" in task:
            print_result(task["result"])
        elif "error" in task:
            print(f"error {task['error'].get('code')}: {task['error'].get('message')}")


@asynccontextmanager
async def connect(args: argparse.Namespace) -> AsyncGenerator[TaskClient]:
    if args.stdio:
        command = shlex.split(args.stdio)
        async with TaskClient.stdio(
            command, wire=args.wire, capabilities=CAPABILITIES, on_request=on_request
        ) as client:
            yield client
    else:
        async with TaskClient.http(
            args.url,
            token=args.token,
            wire=args.wire,
            capabilities=CAPABILITIES,
            on_request=on_request,
        ) as client:
            yield client


async def main(args: argparse.Namespace) -> int:
    arguments = json.loads(args.arguments)
    async with connect(args) as client:
        task = {"ttl": 3_600_000} if args.wire == "2025-11-25" else None
        try:
            created = await client.call_tool(
                args.tool, arguments, task=task, progress_token="example"
            )
        except RpcError as exc:
            print(f"error {exc.code}: {exc.message}")
            return 1
        handle = client.created_task(created)
        if handle is None:
            print_result(created)  # the server answered right away
            return 0
        print(f"task {handle['taskId']}")
        await Follower(client).run(handle)
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Call a tool as a durable task.")
    parser.add_argument(
        "--wire", default="2025-11-25", choices=["2025-11-25", "2026-07-28"]
    )
    parser.add_argument("--token", help="bearer token (HTTP servers with --tokens)")
    parser.add_argument(
        "--stdio", metavar="COMMAND", help="spawn a stdio server instead"
    )
    parser.add_argument("url", nargs="?" if "--stdio" in argv else None)
    parser.add_argument("tool")
    parser.add_argument("arguments", nargs="?", default="{}")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(anyio.run(main, parse(sys.argv[1:]), backend="asyncio"))
