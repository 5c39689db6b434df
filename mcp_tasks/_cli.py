"""The ``mcp-tasks`` command line: ``mcp-tasks serve``.

Exit codes: 0 after a clean shutdown, 2 for a configuration error, 3 when the
journal cannot be opened (corrupt, unwritable or from a newer version).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import anyio

from mcp_tasks._config import Settings
from mcp_tasks._exceptions import ConfigurationError, JournalError
from mcp_tasks._toolloader import default_tools_path, load_tools
from mcp_tasks.binding import McpTasksServer, Transport
from mcp_tasks.engine import TaskRuntime

EXIT_CONFIG = 2
EXIT_JOURNAL = 3
DEFAULT_DB = "mcp-tasks.db"

logger = logging.getLogger("mcp_tasks")


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(prog="mcp-tasks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the MCP server")
    serve.add_argument(
        "--http",
        metavar="HOST:PORT",
        type=_host_port,
        help="serve Streamable HTTP at http://HOST:PORT/mcp (default: stdio); port 0 picks a free one",
    )
    serve.add_argument("--db", type=Path, default=Path(DEFAULT_DB), help="journal file")
    serve.add_argument("--config", type=Path, help="TOML config file (limits, tools)")
    serve.add_argument("--tokens", type=Path, help="TOML bearer-token file (HTTP only)")
    serve.add_argument(
        "--tools",
        type=Path,
        action="append",
        help="tool module file or folder; repeatable; replaces the default tools/",
    )
    serve.add_argument("--log-level", default="INFO", help="logging level (stderr)")
    return parser


async def _serve(args: argparse.Namespace, settings: Settings) -> None:
    tools = load_tools(args.tools or [default_tools_path()], settings.tool_config)
    transport = Transport.HTTP if args.http else Transport.STDIO
    # The journal opens before any task group, so a start-up error (bad file,
    # newer schema, lock held) surfaces as itself and maps to its exit code.
    async with TaskRuntime.open(args.db, settings, tools) as runtime:
        server = McpTasksServer(runtime, transport)
        logger.info(
            "serving %d tools (%s) over %s, journal %s",
            len(tools),
            ", ".join(sorted(tools)),
            f"http://{args.http[0]}:{args.http[1]}/mcp" if args.http else "stdio",
            args.db,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            if args.http:
                await server.serve_http(*args.http)
            else:
                await server.serve_stdio()
            tg.cancel_scope.cancel()


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("received %s; shutting down", signal.Signals(signum).name)
            scope.cancel()
            return


def _run(args: argparse.Namespace, settings: Settings) -> None:
    try:
        anyio.run(_serve, args, settings, backend="asyncio")
    except BaseExceptionGroup as group:
        # A start-up error raised inside a task group arrives wrapped; one
        # known error alone is reported as itself (a clear line, an exit code).
        leaves = group.exceptions
        if len(leaves) == 1 and isinstance(
            leaves[0], ConfigurationError | JournalError
        ):
            raise leaves[0] from None
        raise


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mcp-tasks`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = Settings.load(args.config, args.tokens)
        if args.tokens is not None and not args.http:
            raise ConfigurationError("--tokens", "bearer tokens apply to --http only")
        _run(args, settings)
    except ConfigurationError as exc:
        print(f"mcp-tasks: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except JournalError as exc:
        print(f"mcp-tasks: {exc}", file=sys.stderr)
        return EXIT_JOURNAL
    return 0
