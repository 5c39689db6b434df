"""Optional py-spy sampling of a server process during a measured phase.

``benchmarks/run --profile`` installs py-spy into ``benchmarks/.venvs/tools`` and
passes its path in ``BENCH_PYSPY``. Each recorded phase leaves a collapsed-stack
file (``out/profiles/<label>.txt``, loadable in speedscope or flamegraph.pl)
and a summary in results.json: where the sampled CPU time went by package
(self time of the innermost frame) and the hottest functions (inclusive).
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Generator
from pathlib import Path
from typing import Any

#: Sampling rate (Hz): low enough to keep py-spy's own cost small.
RATE = 250
#: Sample without pausing the target (less overhead, occasionally torn stacks).
NONBLOCKING = False
#: Bound on py-spy writing its file after SIGINT.
FLUSH_TIMEOUT = 30.0

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")

#: Package buckets, first match wins (path fragments of the frame's file).
_BUCKETS: tuple[tuple[str, str], ...] = (
    ("/mcp_tasks/journal/", "mcp_tasks journal"),
    ("/mcp_tasks/binding/", "mcp_tasks binding"),
    ("/mcp_tasks/", "mcp_tasks engine"),
    ("/aiosqlite/", "aiosqlite (thread hop)"),
    ("/sqlite3/", "sqlite3"),
    ("/mcp_types/", "mcp_types (pydantic models)"),
    ("/mcp/", "mcp SDK"),
    ("/pydantic", "pydantic"),
    ("/starlette/", "starlette"),
    ("/sse_starlette/", "sse-starlette"),
    ("/uvicorn/", "uvicorn"),
    ("/h11/", "h11 (HTTP parsing)"),
    ("/httptools/", "httptools"),
    ("/uvloop/", "uvloop"),
    ("/anyio/", "anyio"),
    ("/asyncio/", "asyncio"),
    ("/json/", "json"),
    ("/jsonschema", "jsonschema"),
    ("/opentelemetry/", "opentelemetry"),
    ("/fastmcp", "fastmcp"),
    ("/docket/", "docket"),
    ("/redis/", "redis client"),
    ("/threading.py", "threading"),
    ("/concurrent/", "threading"),
    ("/queue.py", "threading"),
    ("/socket.py", "sockets"),
    ("/selectors.py", "asyncio"),
    ("/uuid.py", "other stdlib"),
    ("/enum.py", "other stdlib"),
    ("/typing.py", "other stdlib"),
    ("<string>", "dataclass-generated code"),
)


#: Innermost frames that are a thread waiting, not computing: the event loop in
#: epoll, aiosqlite's worker thread blocked on its request queue.
_WAITS: tuple[str, ...] = (
    "EpollSelector.select (selectors.py",
    "_connection_worker_thread (aiosqlite/core.py:59)",
    "Condition.wait (threading.py",
    "Queue.get (queue.py",
)


#: Any stack through this frame is the journal writer's own thread: building
#: rows, SQLite executing them, the commit and its fsync (sqlite3's C calls show
#: as the Python line that made them).
_WRITER_THREAD = "GroupCommitWriter._commit ("

#: Innermost frames worth their own bucket (the aiosqlite thread hop, split).
_LEAVES: tuple[tuple[str, str], ...] = (
    (
        "_connection_worker_thread (aiosqlite/core.py:63)",
        "SQLite on the aiosqlite thread (SQL, commit, fsync)",
    ),
    ("Connection._execute (aiosqlite/core.py:158)", "aiosqlite hand-off (queue put)"),
)


def _bucket(path: str) -> str:
    path = "/" + path  # py-spy prints paths relative to sys.path entries
    for fragment, name in _BUCKETS:
        if fragment in path:
            return name
    return "other"


def summarize(collapsed: Path, top: int = 25) -> dict[str, Any]:
    """Self time by package and the hottest functions (inclusive), in percent.

    Percentages are of all samples of all threads; samples whose innermost
    frame is a known wait are counted apart, as waiting.
    """
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        seen: set[str] = set()
        for frame in frames:
            match = _FRAME.match(frame)
            name = (
                frame if match is None else f"{match['func']} ({_short(match['file'])})"
            )
            if name not in seen:
                seen.add(name)
                inclusive[name] += count
        if frames[-1].startswith(_WAITS):
            by_package["(waiting: epoll / idle threads)"] += count
            continue
        if any(frame.startswith(_WRITER_THREAD) for frame in frames):
            by_package["journal writer thread (rows, SQL, commit, fsync)"] += count
            continue
        special = [name for prefix, name in _LEAVES if frames[-1].startswith(prefix)]
        if special:
            by_package[special[0]] += count
            continue
        leaf = _FRAME.match(frames[-1])
        by_package[_bucket(leaf["file"] if leaf else frames[-1])] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "self_by_package_pct": {
            k: round(100 * v / total, 1) for k, v in by_package.most_common()
        },
        "hottest_inclusive_pct": {
            k: round(100 * v / total, 1) for k, v in inclusive.most_common(top)
        },
    }


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


class Profiler:
    """Records phases with py-spy when enabled; otherwise does nothing."""

    def __init__(self, pyspy: Path | None, out: Path) -> None:
        self.pyspy = pyspy
        self.out = out
        self.summaries: dict[str, Any] = {}

    @property
    def enabled(self) -> bool:
        return self.pyspy is not None

    @contextlib.contextmanager
    def record(self, pid: int, label: str) -> Generator[None]:
        if self.pyspy is None:
            yield
            return
        self.out.mkdir(parents=True, exist_ok=True)
        target = self.out / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}.txt"
        process = subprocess.Popen(
            [
                str(self.pyspy),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(RATE),
                "--format",
                "raw",
                *(["--nonblocking"] if NONBLOCKING else []),
                "--output",
                str(target),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(FLUSH_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if target.exists():
            self.summaries[label] = {"file": str(target), **summarize(target)}
