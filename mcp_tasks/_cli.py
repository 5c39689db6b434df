"""The ``mcp-tasks`` command line.

``mcp-tasks serve`` runs the server; ``mcp-tasks tasks list|show|cancel|answer|retry``,
``stats`` and ``top`` are the operator's commands (`mcp_tasks.ops._commands`,
their own exit codes); ``mcp-tasks journal keygen|rekey`` manage the journal's
encryption keys (`mcp_tasks.ops._keys`); ``mcp-tasks call`` is the client for people
(`mcp_tasks.ops._call`, its own exit codes).

Exit codes of ``serve``:

- 0: clean shutdown (SIGINT or SIGTERM, or stdin closed on stdio).
- 1: an unexpected error: a bug, reported with a traceback.
- 2: a bad command line, config file, token file or tool table, or an
  ``[auth]`` that cannot work (the ``oauth`` extra is missing, the JWKS or
  secret file is unreadable), or an encryption key file that cannot open the
  journal (missing, malformed, a wrong key, or none for a journal holding
  encrypted values); the message names the option or key.
- 3: the journal cannot be opened (not a database, no write access, written by
  a newer mcp-tasks, or in use by another process).
- 4: ``--http HOST:PORT`` cannot be listened on (address in use, not a local
  address, no permission, unknown host name).

Every start-up error is one line on stderr, ``mcp-tasks: …``, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Final, NoReturn, cast

import anyio

from mcp_tasks._config import Settings
from mcp_tasks._exceptions import ConfigurationError, JournalError, ListenError
from mcp_tasks._logs import configure_logging
from mcp_tasks._telemetry import start_tracing
from mcp_tasks._toolapi import ToolSpec
from mcp_tasks._toolloader import default_tools_path, load_tools
from mcp_tasks.binding import (
    HttpAuth,
    McpTasksServer,
    Transport,
    fast_loop,
    listen,
    url,
)
from mcp_tasks.engine import TaskRuntime
from mcp_tasks.ops import _call, _commands, _keys

EXIT_OK: Final = 0
EXIT_CONFIG: Final = 2
EXIT_JOURNAL: Final = 3
EXIT_LISTEN: Final = 4
DEFAULT_DB: Final = "mcp-tasks.db"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

logger = logging.getLogger("mcp_tasks")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit code 2).

    ``usage_exit`` changes that code for one subcommand (``call`` uses 2
    for a cancelled task, so its usage errors exit 3).
    """

    def __init__(self, *args: Any, usage_exit: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usage_exit = usage_exit

    def error(self, message: str) -> NoReturn:
        self.exit(self.usage_exit, f"mcp-tasks: {message} (see {self.prog} --help)\n")


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mcp-tasks")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = _Parser(prog="mcp-tasks", description="Durable MCP tasks server.")
    parser.add_argument(
        "--version", action="version", version=f"mcp-tasks {_version()}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the MCP server")
    serve.add_argument(
        "--http",
        metavar="HOST:PORT",
        type=_host_port,
        help="serve Streamable HTTP at http://HOST:PORT/mcp (default: stdio); port 0 picks a free one",
    )
    serve.add_argument(
        "--db",
        help=(
            f"journal: a file path (SQLite; default {DEFAULT_DB}, or [journal] db "
            "in the config) or postgresql://USER@HOST:PORT/DB"
        ),
    )
    serve.add_argument("--config", type=Path, help="TOML config file (limits, tools)")
    serve.add_argument("--tokens", type=Path, help="TOML bearer-token file (HTTP only)")
    serve.add_argument(
        "--tools",
        type=Path,
        action="append",
        help="tool module file or folder; repeatable; replaces the default tools/",
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="logging level (stderr; default INFO)",
    )
    serve.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help="text lines, or one JSON object per line (default text)",
    )
    _commands.add_commands(commands, DEFAULT_DB)
    _keys.add_command(commands, DEFAULT_DB)
    _call.add_command(commands)
    return parser


def raise_open_files_limit() -> None:
    """Raise the soft open-files limit as far as the hard limit allows.

    Every HTTP connection is a file descriptor, and the usual soft limit
    (1024) is far below what the hard limit permits.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    # macOS refuses values above kern.maxfilesperproc: try smaller ones too.
    for target in (wanted, 65_536, 10_240):
        if soft != resource.RLIM_INFINITY and soft < target <= wanted:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError):
                continue
            logger.debug("open-files limit raised from %d to %d", soft, target)
            return


async def _serve(
    args: argparse.Namespace,
    settings: Settings,
    tools: dict[str, ToolSpec],
    sockets: list[socket.socket] | None,
    auth: HttpAuth | None = None,
) -> None:
    transport = Transport.HTTP if args.http else Transport.STDIO
    # The journal opens before any task group, so a start-up error (bad file,
    # newer schema, lock held) surfaces as itself and maps to its exit code.
    async with TaskRuntime.open(
        _journal_location(args, settings), settings, tools
    ) as runtime:
        server = McpTasksServer(runtime, transport)
        _announce(args, tools, sockets, runtime.journal.location)
        if args.http:
            # Before the server sizes its connection limit to the open-files
            # limit (and after the first line, which names the port).
            raise_open_files_limit()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            if args.http:
                await server.serve_http(*args.http, sockets=sockets, auth=auth)
            else:
                await server.serve_stdio()
            tg.cancel_scope.cancel()


def _journal_location(args: argparse.Namespace, settings: Settings) -> str:
    """``--db``, else the config's ``[journal] db``, else the default file."""
    if args.db is not None:
        return str(args.db)
    return settings.db or DEFAULT_DB


def _announce(
    args: argparse.Namespace,
    tools: dict[str, ToolSpec],
    sockets: list[socket.socket] | None,
    runtime_location: str,
) -> None:
    # The first line: where (with the real port when --http asked for 0),
    # what, and which journal.
    where = "stdio"
    if sockets:
        where = url(args.http[0], sockets[0].getsockname()[1])
    logger.info(
        "mcp-tasks %s serving %d tools (%s) on %s, journal %s",
        _version(),
        len(tools),
        ", ".join(sorted(tools)),
        where,
        runtime_location,
        extra={"url": where, "tools": sorted(tools), "journal": runtime_location},
    )
    if not tools:
        logger.warning(
            "no tools loaded from %s: clients will see an empty tool list",
            ", ".join(str(p) for p in args.tools or [default_tools_path()]),
        )


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("received %s; shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


def _run(
    args: argparse.Namespace,
    settings: Settings,
    tools: dict[str, ToolSpec],
    sockets: list[socket.socket] | None,
    auth: HttpAuth | None,
) -> None:
    try:
        # uvloop (when installed) serves HTTP with about a third less CPU per
        # request; stdio stays on asyncio (benchmarks/RESULTS.md).
        uvloop = args.http is not None and fast_loop(settings.http)
        anyio.run(
            _serve,
            args,
            settings,
            tools,
            sockets,
            auth,
            backend="asyncio",
            backend_options={"use_uvloop": uvloop},
        )
    except BaseExceptionGroup as group:
        # A start-up error raised inside task groups arrives wrapped (once per
        # group); one known error alone is reported as itself (a clear line,
        # an exit code).
        leaves = _leaves(group)
        if len(leaves) == 1 and isinstance(
            leaves[0], ConfigurationError | JournalError | ListenError
        ):
            raise leaves[0] from None
        raise


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        group = cast("BaseExceptionGroup[BaseException]", error)
        return [leaf for inner in group.exceptions for leaf in _leaves(inner)]
    return [error]


def _start(args: argparse.Namespace) -> None:
    settings = Settings.load(args.config, args.tokens)
    if args.tokens is not None and not args.http:
        raise ConfigurationError("--tokens", "bearer tokens apply to --http only")
    if settings.oauth is not None and not args.http:
        raise ConfigurationError("auth", "[auth] applies to --http only")
    # Before the journal opens: a missing extra or an unreadable JWKS file is
    # a configuration error (exit 2), not a failure once serving.
    auth = HttpAuth.from_settings(settings) if args.http else None
    tools = load_tools(args.tools or [default_tools_path()], settings.tool_config)
    sockets = None
    if args.http:
        sockets = listen(*args.http)
    with start_tracing(settings.tracing):
        _run(args, settings, tools, sockets, auth)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mcp-tasks`` console script; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "call":
        # Positionals may come on both sides of an option (URL --attach ID
        # TOOL): `call` itself says what is wrong with them.
        return _call.run(_call.with_extra_targets(args, extra))
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command != "serve":
        configure_logging("WARNING", "text")
        try:
            if args.command == "journal":
                return _keys.run(args)
            return _commands.run(args)
        except ConfigurationError as exc:
            return _fail(args, EXIT_CONFIG, exc)
        except JournalError as exc:
            return _fail(args, EXIT_JOURNAL, exc)
    configure_logging(args.log_level, args.log_format)
    try:
        _start(args)
    except ConfigurationError as exc:
        return _fail(args, EXIT_CONFIG, exc)
    except JournalError as exc:
        return _fail(args, EXIT_JOURNAL, exc)
    except ListenError as exc:
        return _fail(args, EXIT_LISTEN, exc)
    return EXIT_OK


def _fail(args: argparse.Namespace, code: int, error: Exception) -> int:
    message = f"mcp-tasks: {error}"
    if getattr(args, "log_format", "text") == "json":
        logger.critical(message, extra={"exit_code": code})
    else:
        print(message, file=sys.stderr)
    return code
