"""The ``digest_files`` tool: digests checked against `hashlib` on real trees.

The body is synchronous, so direct calls run it in a worker thread behind a
real `ThreadTaskContext` wrapping a recording fake, as the runtime does.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

from mcp_tasks import (
    Settings,
    TaskContext,
    TaskRuntime,
    TaskStatus,
    ThreadTaskContext,
    ToolError,
    ToolResult,
    tool,
)
from mcp_tasks._toolapi import spec_of

from .support import (
    TESTER,
    TIMEOUT,
    FakeContext,
    load_tool,
    open_runtime,
    tool_module,
)


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return hashlib.new(algorithm, data).hexdigest()


def tree_digest(files: dict[str, bytes], algorithm: str = "sha256") -> str:
    """The tree digest, computed independently of the tool."""
    lines = b"".join(
        f"{relpath}\0{digest(data, algorithm)}\n".encode()
        for relpath, data in sorted(files.items())
    )
    return digest(lines, algorithm)


async def call(
    path: Path | str,
    ctx: FakeContext | None = None,
    *,
    on_thread_ctx: Callable[[ThreadTaskContext], None] | None = None,
    **kwargs: Any,
) -> ToolResult:
    """Run the tool body in a worker thread, as the runtime does."""
    spec = load_tool("digest_files")
    thread_ctx = ThreadTaskContext(cast("TaskContext", ctx or FakeContext()))
    if on_thread_ctx is not None:
        on_thread_ctx(thread_ctx)
    with anyio.fail_after(TIMEOUT):
        result = await anyio.to_thread.run_sync(
            lambda: spec.fn(thread_ctx, path=str(path), **kwargs)
        )
    return cast("ToolResult", result)


def structured(result: ToolResult) -> dict[str, Any]:
    assert result.structured is not None
    return result.structured


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A small tree with nesting, an empty file, and links in and out."""
    root = tmp_path / "tree"
    files = {
        "a.txt": b"alpha\n",
        "b-c.txt": b"sorted before b/ by code point",
        "b/nested.bin": bytes(range(256)) * 10,
        "b/deeper/empty": b"",
        "z.txt": b"zulu",
    }
    for relpath, data in files.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(data)
    (tmp_path / "outside.txt").write_text("secret")
    (root / "link-in").symlink_to(root / "a.txt")
    (root / "link-out").symlink_to(tmp_path / "outside.txt")
    (root / "link-dir").symlink_to(root / "b")
    os.mkfifo(root / "fifo")
    return root, {**files, "link-in": files["a.txt"]}


async def test_digests_match_hashlib(tree: tuple[Path, dict[str, bytes]]) -> None:
    root, files = tree
    result = await call(root)
    data = structured(result)
    assert not result.is_error
    assert data["files"] == [
        {"path": relpath, "digest": digest(content), "size": len(content)}
        for relpath, content in sorted(files.items())
    ]
    assert data["tree_digest"] == tree_digest(files)
    assert data["file_count"] == len(files)
    assert data["total_bytes"] == sum(len(content) for content in files.values())
    assert data["files_omitted"] == 0
    assert data["tree_digest"] in result.content[0]["text"]


async def test_skips_links_leaving_the_tree_and_special_files(
    tree: tuple[Path, dict[str, bytes]],
) -> None:
    data = structured(await call(tree[0]))
    assert [(item["path"], item["reason"]) for item in data["skipped"]] == [
        ("fifo", "not a regular file"),
        ("link-dir", "symlink to a directory (not followed)"),
        ("link-out", "symlink pointing outside the tree"),
    ]
    assert data["skipped_count"] == 3


async def test_the_tree_digest_changes_with_any_content(
    tree: tuple[Path, dict[str, bytes]],
) -> None:
    root, _ = tree
    before = structured(await call(root))["tree_digest"]
    (root / "b" / "deeper" / "empty").write_bytes(b"!")
    assert structured(await call(root))["tree_digest"] != before


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5", "blake2b"])
async def test_hashes_a_single_file(tmp_path: Path, algorithm: str) -> None:
    target = tmp_path / "one.dat"
    target.write_bytes(b"x" * 3_000_000)  # several read chunks
    data = structured(await call(target, algorithm=algorithm))
    assert data["algorithm"] == algorithm
    assert data["files"] == [
        {
            "path": "one.dat",
            "digest": digest(b"x" * 3_000_000, algorithm),
            "size": 3_000_000,
        }
    ]
    assert data["tree_digest"] == tree_digest({"one.dat": b"x" * 3_000_000}, algorithm)


async def test_refuses_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="does not exist"):
        await call(tmp_path / "missing")


async def test_caps_the_file_list_but_not_the_tree_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 20  # the real cap works the same, only slower to set up
    monkeypatch.setattr(tool_module("digest_files"), "MAX_LISTED", cap)
    files = {f"f{index:05}": str(index).encode() for index in range(cap + 5)}
    for relpath, content in files.items():
        (tmp_path / relpath).write_bytes(content)
    data = structured(await call(tmp_path))
    assert len(data["files"]) == cap
    assert data["files"][-1]["path"] == f"f{cap - 1:05}"
    assert data["files_omitted"] == 5
    assert data["file_count"] == cap + 5
    assert data["tree_digest"] == tree_digest(files)


async def test_reports_progress_in_bytes_throttled(tmp_path: Path) -> None:
    for index in range(300):
        (tmp_path / f"f{index:03}").write_bytes(b"y" * 1000)
    ctx = FakeContext()
    started = time.monotonic()
    await call(tmp_path, ctx)
    elapsed = time.monotonic() - started
    assert ctx.progress[0] == (0, 300_000, "hashing 300 files")
    assert ctx.progress[-1] == (300_000, 300_000, "hashed 300 files")
    done = [progress for progress, _, _ in ctx.progress]
    assert done == sorted(set(done)), "progress always increases"
    interval = tool_module("digest_files").PROGRESS_INTERVAL_SECONDS
    assert len(ctx.progress) <= 3 + elapsed / interval


@pytest.fixture
def report_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small chunks, no throttle: every chunk read is a progress report."""
    module = tool_module("digest_files")
    monkeypatch.setattr(module, "CHUNK_BYTES", 10)
    monkeypatch.setattr(module, "PROGRESS_INTERVAL_SECONDS", 0)


async def cancelled_after_report(
    path: Path, report_number: int
) -> tuple[ToolResult, FakeContext]:
    """Run the tool and cancel its context right after report ``report_number``."""
    ctx = FakeContext()
    holder: list[ThreadTaskContext] = []

    def cancel_at_report() -> None:
        if len(ctx.progress) == report_number:
            holder[0].cancel()

    ctx.on_progress = cancel_at_report
    return await call(path, ctx, on_thread_ctx=holder.append), ctx


@pytest.mark.usefixtures("report_every_chunk")
async def test_stops_before_the_next_file_when_cancelled(tmp_path: Path) -> None:
    for index in range(3):
        (tmp_path / f"f{index}").write_bytes(b"z" * 30)
    result, ctx = await cancelled_after_report(tmp_path, 1)
    assert result.is_error
    assert result.structured is None
    assert "Cancelled" in result.content[0]["text"]
    assert [progress for progress, _, _ in ctx.progress] == [0]


@pytest.mark.usefixtures("report_every_chunk")
async def test_stops_within_a_file_when_cancelled(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"z" * 50)
    result, ctx = await cancelled_after_report(tmp_path, 2)
    assert "Cancelled" in result.content[0]["text"]
    assert [progress for progress, _, _ in ctx.progress] == [0, 10]


# ----------------------------------------------------------- via the runtime


async def test_runtime_completes_with_the_digests(
    tmp_path: Path, tree: tuple[Path, dict[str, bytes]]
) -> None:
    root, files = tree
    async with open_runtime(tmp_path) as runtime:
        task = await runtime.submit(TESTER, "digest_files", {"path": str(root)})
        with anyio.fail_after(TIMEOUT):
            done = await runtime.wait_terminal(TESTER, task.task_id)
    assert done.status is TaskStatus.COMPLETED
    assert done.outcome is not None
    result = cast("dict[str, Any]", done.outcome.result)
    assert result["isError"] is False
    assert result["structuredContent"]["tree_digest"] == tree_digest(files)


class GatedContext:
    """Wraps the runtime's thread context; holds the first progress report.

    ``cancelled`` reads through to the runtime's context, so the body sees
    the runtime's cancellation exactly as it would unwrapped.
    """

    def __init__(self, real: ThreadTaskContext, first_report: anyio.Event) -> None:
        self._real = real
        self._first_report = first_report
        self.release = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._real.cancelled

    def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        anyio.from_thread.run_sync(self._first_report.set)
        self.release.wait(TIMEOUT)


async def test_runtime_cancel_makes_the_thread_stop(tmp_path: Path) -> None:
    for index in range(3):
        (tmp_path / f"f{index}").write_bytes(b"w" * 100)
    real = load_tool("digest_files").fn
    first_report = anyio.Event()
    returned = anyio.Event()
    contexts: list[GatedContext] = []
    results: list[ToolResult] = []

    @tool(name="digest_files")
    def gated(ctx: ThreadTaskContext, path: str) -> ToolResult:
        gated_ctx = GatedContext(ctx, first_report)
        contexts.append(gated_ctx)
        results.append(real(gated_ctx, path=path))
        anyio.from_thread.run_sync(returned.set)
        return results[0]

    spec = spec_of(gated)
    assert spec is not None
    db_path = tmp_path / "tasks.db"
    async with TaskRuntime.open(db_path, Settings(), {spec.name: spec}) as runtime:
        task = await runtime.submit(TESTER, "digest_files", {"path": str(tmp_path)})
        with anyio.fail_after(TIMEOUT):
            await first_report.wait()
            cancelled = await runtime.cancel(TESTER, task.task_id)
            contexts[0].release.set()
            await returned.wait()
    assert cancelled.status is TaskStatus.CANCELLED
    assert results[0].is_error
    assert "Cancelled" in results[0].content[0]["text"]
