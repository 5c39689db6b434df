"""The ``digest_files`` tool: hashes a file or a whole directory tree.

Useful to check that two copies of a tree match, or that a build output did
not change. The result lists each file's digest by path relative to the root
(code-point order of the POSIX path, so it is deterministic) plus one *tree
digest*: the same algorithm over the lines ``relpath\\0digest\\n`` of every
file in that order. Two trees with equal tree digests hold the same files with
the same contents.

Symbolic links to files inside the tree are hashed as the file they point to;
links that point outside the tree, links to directories (never followed, so
cycles are impossible) and special files (FIFOs, sockets, devices) are skipped
and listed as such, as are files that cannot be read.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import Field

from mcp_tasks import ThreadTaskContext, ToolError, ToolResult, tool

Algorithm = Literal["sha256", "sha1", "md5", "blake2b"]

#: Read size when hashing; also how often cancellation is checked within a file.
CHUNK_BYTES: Final = 1024 * 1024
#: Minimum time between two progress reports.
PROGRESS_INTERVAL_SECONDS: Final = 0.2
#: How many files (and skipped entries) the result lists by name.
MAX_LISTED: Final = 1000


@dataclass(frozen=True, slots=True)
class Entry:
    """A regular file to hash: where it is read from and how it is named."""

    relpath: str
    path: str
    size: int


@dataclass(slots=True)
class Scan:
    """What a walk over the tree found."""

    files: list[Entry] = field(default_factory=lambda: list[Entry]())
    skipped: list[dict[str, str]] = field(
        default_factory=lambda: list[dict[str, str]]()
    )

    def skip(self, relpath: str, reason: str) -> None:
        """Record an entry that is not hashed, with why."""
        self.skipped.append({"path": relpath, "reason": reason})


# ------------------------------------------------------------------ scanning


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _classify_link(
    entry: os.DirEntry[str], relpath: str, root: str, scan: Scan
) -> None:
    target = os.path.realpath(entry.path)
    if not _inside(target, root):
        scan.skip(relpath, "symlink pointing outside the tree")
        return
    try:
        info = os.stat(target)
    except OSError:
        scan.skip(relpath, "broken symlink")
        return
    if stat.S_ISDIR(info.st_mode):
        scan.skip(relpath, "symlink to a directory (not followed)")
    elif stat.S_ISREG(info.st_mode):
        scan.files.append(Entry(relpath, target, info.st_size))
    else:
        scan.skip(relpath, "symlink to a special file")


def _scan_directory(directory: str, prefix: str, root: str, scan: Scan) -> list[str]:
    """Record the files in one directory; return its subdirectories."""
    subdirectories: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        scan.skip(prefix.rstrip("/") or ".", f"cannot list: {exc.strerror}")
        return subdirectories
    for entry in entries:
        relpath = prefix + entry.name
        if entry.is_symlink():
            _classify_link(entry, relpath, root, scan)
        elif entry.is_dir(follow_symlinks=False):
            subdirectories.append(entry.path)
        elif entry.is_file(follow_symlinks=False):
            size = entry.stat(follow_symlinks=False).st_size
            scan.files.append(Entry(relpath, entry.path, size))
        else:
            scan.skip(relpath, "not a regular file")
    return subdirectories


def scan_tree(root: str, cancelled: Callable[[], bool]) -> Scan:
    """Find every file under ``root`` (already resolved), sorted by relpath."""
    scan = Scan()
    pending = [root]
    while pending and not cancelled():
        directory = pending.pop()
        prefix = os.path.relpath(directory, root).replace(os.sep, "/") + "/"
        prefix = "" if prefix == "./" else prefix
        pending.extend(_scan_directory(directory, prefix, root, scan))
    scan.files.sort(key=lambda entry: entry.relpath)
    return scan


# ------------------------------------------------------------------- hashing


class Progress:
    """Throttled progress reports in bytes, always increasing."""

    def __init__(
        self,
        ctx: ThreadTaskContext,
        total: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctx = ctx
        self.total = total
        self._clock = clock
        self._last_time = clock()
        self._last_done = 0
        self.done = 0

    def advance(self, count: int, message: str) -> None:
        """Count ``count`` more bytes; report if enough time passed."""
        self.done += count
        now = self._clock()
        if now - self._last_time >= PROGRESS_INTERVAL_SECONDS:
            self.report(message)
            self._last_time = now

    def report(self, message: str) -> None:
        """Report now, unless nothing changed since the last report."""
        if self.done > self._last_done:
            self._last_done = self.done
            self._ctx.report_progress(self.done, self.total, message)


def _hash_file(
    entry: Entry, algorithm: str, ctx: ThreadTaskContext, progress: Progress
) -> str | None:
    """The file's hex digest, or None if cancelled midway."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    message = f"hashing {entry.relpath}"
    with open(entry.path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            progress.advance(len(chunk), message)
            if ctx.cancelled:
                return None
    return digest.hexdigest()


def _hash_files(
    ctx: ThreadTaskContext, scan: Scan, algorithm: str
) -> Iterator[tuple[Entry, str]]:
    """Yield each readable file with its digest, stopping when cancelled."""
    progress = Progress(ctx, sum(entry.size for entry in scan.files))
    ctx.report_progress(0, progress.total, f"hashing {len(scan.files)} files")
    for entry in scan.files:
        if ctx.cancelled:
            return
        try:
            digest = _hash_file(entry, algorithm, ctx, progress)
        except OSError as exc:
            scan.skip(entry.relpath, f"cannot read: {exc.strerror}")
            continue
        if digest is None:
            return
        yield entry, digest
    progress.report(f"hashed {len(scan.files)} files")


# ------------------------------------------------------------------- results


def _display(relpath: str) -> str:
    # Undecodable file names survive as surrogates; show them escaped.
    return relpath.encode("utf-8", "surrogateescape").decode(
        "utf-8", "backslashreplace"
    )


def _result(
    root: str, algorithm: str, hashed: list[tuple[Entry, str]], scan: Scan
) -> ToolResult:
    tree = hashlib.new(algorithm, usedforsecurity=False)
    for entry, digest in hashed:
        tree.update(os.fsencode(entry.relpath) + b"\0" + digest.encode() + b"\n")
    total_bytes = sum(entry.size for entry, _ in hashed)
    files = [
        {"path": _display(entry.relpath), "digest": digest, "size": entry.size}
        for entry, digest in hashed[:MAX_LISTED]
    ]
    structured: dict[str, Any] = {
        "root": root,
        "algorithm": algorithm,
        "tree_digest": tree.hexdigest(),
        "file_count": len(hashed),
        "total_bytes": total_bytes,
        "files": files,
        "files_omitted": max(0, len(hashed) - MAX_LISTED),
        "skipped": sorted(scan.skipped, key=lambda item: item["path"])[:MAX_LISTED],
        "skipped_count": len(scan.skipped),
    }
    text = (
        f"{algorithm} tree digest of {root}: {tree.hexdigest()}\n"
        f"{len(hashed)} files, {total_bytes} bytes hashed; "
        f"{len(scan.skipped)} entries skipped."
    )
    return ToolResult([{"type": "text", "text": text}], structured)


def _scan_single_file(root: Path) -> Scan:
    scan = Scan()
    info = root.stat()
    if stat.S_ISREG(info.st_mode):
        scan.files.append(Entry(root.name, str(root), info.st_size))
    else:
        scan.skip(root.name, "not a regular file")
    return scan


@tool(task_support="optional")
def digest_files(
    ctx: ThreadTaskContext,
    path: Annotated[str, Field(description="A file, or a directory to walk")],
    algorithm: Annotated[Algorithm, Field(description="Hash algorithm")] = "sha256",
) -> ToolResult:
    """Hash a file or every file in a directory tree, plus one tree digest.

    Reports progress in bytes. Symlinks leaving the tree and special files are
    skipped and listed. At most 1000 files are listed by name; the tree digest
    always covers all of them.
    """
    try:
        root = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ToolError(f"{path!r} does not exist or cannot be resolved") from None
    if root.is_dir():
        scan = scan_tree(str(root), lambda: ctx.cancelled)
    else:
        scan = _scan_single_file(root)
    hashed = list(_hash_files(ctx, scan, algorithm))
    if ctx.cancelled:
        return ToolResult.text("Cancelled before all files were hashed.", is_error=True)
    return _result(str(root), algorithm, hashed, scan)
