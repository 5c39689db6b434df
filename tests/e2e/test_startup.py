"""What an operator sees when ``mcp-tasks`` starts, or refuses to.

A refusal is one line on stderr with a documented exit code, never a
traceback, and leaves no journal behind: 2 for a bad command line, config or
tool table; 4 when the HTTP address cannot be listened on. A server that
starts names its real port on its first line (also with port 0), warns when
it has no tools, and ``--log-format json`` makes every line a JSON object.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_tasks.client import TaskClient

from .conftest import ServerFilesFactory
from .support import E2E_TOOLS, TIMEOUT, HttpServer, obj

pytestmark = pytest.mark.timeout(60)

TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools"
SERVE = [sys.executable, "-m", "mcp_tasks", "serve"]


def run(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``argv`` to its end (stdin closed); its exit code and stderr.

    A server that does not exit on its own within the bound is killed and
    reported as such: it started when it should have refused.
    """
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
    )
    try:
        _, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"still running after {TIMEOUT:g} s: {stderr.decode()}")
    return process.returncode, stderr.decode(errors="replace")


def assert_one_line(stderr: str) -> str:
    """``stderr`` is one ``mcp-tasks: …`` line; returns it."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mcp-tasks: "), stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port someone else listens on."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        yield holder.getsockname()[1]


def test_a_port_in_use_exits_4_with_one_line(busy_port: int, tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    argv = [*SERVE, "--http", f"127.0.0.1:{busy_port}", "--db", str(db)]
    code, stderr = run(argv, tmp_path)
    assert code == 4, stderr
    line = assert_one_line(stderr)
    assert f"cannot listen on 127.0.0.1:{busy_port}" in line
    assert "in use" in line
    assert not db.exists()


def test_an_unknown_host_exits_4_with_one_line(tmp_path: Path) -> None:
    argv = [*SERVE, "--http", "no-such-host.invalid:0", "--db", str(tmp_path / "t.db")]
    code, stderr = run(argv, tmp_path)
    assert code == 4, stderr
    assert "cannot listen on no-such-host.invalid:0" in assert_one_line(stderr)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--log-level", "loud"], "--log-level"),
        (["--log-format", "xml"], "--log-format"),
        (["--http", "8765"], "--http"),
    ],
)
def test_a_bad_option_exits_2_with_one_line(
    argv: list[str], named: str, tmp_path: Path
) -> None:
    code, stderr = run([*SERVE, *argv, "--db", str(tmp_path / "t.db")], tmp_path)
    assert code == 2, stderr
    assert named in assert_one_line(stderr)
    assert not (tmp_path / "t.db").exists()


BAD_TOOL_TABLES = {
    # name: (config, tool modules, the key the message must name)
    "unknown-tool": ('[tools.gates]\nevents = "x"\n', [E2E_TOOLS], "tools.gates"),
    "unknown-key": ('[tools.gate]\nevnts = "x"\n', [E2E_TOOLS], "tools.gate.evnts"),
    "no-config": ("[tools.echo]\ntext = 1\n", [E2E_TOOLS], "tools.echo.text"),
    "wrong-type": (
        '[tools.run_command]\nallowed = "make"\n',
        [TOOLS_DIR / "run_command.py"],
        "tools.run_command.allowed",
    ),
    "bad-entry": (
        '[tools.run_command]\nallowed = ["./build.sh"]\n',
        [TOOLS_DIR / "run_command.py"],
        "tools.run_command.allowed.0",
    ),
}


@pytest.mark.parametrize("name", list(BAD_TOOL_TABLES))
def test_a_bad_tool_table_exits_2_at_start_up(name: str, tmp_path: Path) -> None:
    text, modules, key = BAD_TOOL_TABLES[name]
    config = tmp_path / "config.toml"
    config.write_text(text)
    db = tmp_path / "tasks.db"
    argv = [*SERVE, "--db", str(db), "--config", str(config)]
    for module in modules:
        argv += ["--tools", str(module)]
    code, stderr = run(argv, tmp_path)
    assert code == 2, stderr
    assert f"'{key}'" in assert_one_line(stderr)
    assert not db.exists()


def test_a_server_without_tools_warns(tmp_path: Path) -> None:
    empty = tmp_path / "no-tools"
    empty.mkdir()
    argv = [*SERVE, "--db", str(tmp_path / "t.db"), "--tools", str(empty)]
    # stdio with stdin closed: starts, finds its client gone, exits 0.
    code, stderr = run(argv, tmp_path)
    assert code == 0, stderr
    assert f"WARNING mcp_tasks: no tools loaded from {empty}" in stderr


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = subprocess.run(
        [sys.executable, "-m", "mcp_tasks", "--version"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        cwd=tmp_path,
    )
    assert (result.returncode, result.stdout) == (
        0,
        f"mcp-tasks {version('mcp-tasks')}\n",
    )


def test_the_first_line_names_the_real_port(server_files: ServerFilesFactory) -> None:
    server = HttpServer(server_files("first-line"))
    try:
        server.start()
    finally:
        server.stop()
    first = server.log_text().splitlines()[0]
    assert f"on http://127.0.0.1:{server.port}/mcp" in first
    assert "journal" in first


async def test_json_log_lines_carry_their_fields(
    server_files: ServerFilesFactory,
) -> None:
    server = HttpServer(server_files("json-logs"), extra_args=["--log-format", "json"])
    try:
        server.start()
        async with TaskClient.http(server.url) as client:
            await client.call_tool("echo", {"text": "hi"})
    finally:
        assert server.stop() == 0
    records = [json.loads(line) for line in server.log_text().splitlines()]
    for record in records:
        assert {"timestamp", "level", "logger", "message"} <= set(record)
        assert record["timestamp"].endswith("Z")
    listening = [r for r in records if r["message"].startswith("listening on")]
    assert [obj(r)["port"] for r in listening] == [server.port]
    assert records[0]["tools"] == [
        "echo",
        "gate",
        "no_task",
        "progress",
        "progress_gate",
        "progress_steps",
        "protocol_error",
        "task_only",
        "tool_error",
    ]
    # Records from the SDK and from shutdown are JSON as well.
    assert {"mcp.server.streamable_http_manager", "mcp_tasks"} <= {
        r["logger"] for r in records
    }


def test_a_json_start_up_error_is_one_json_line(busy_port: int, tmp_path: Path) -> None:
    argv = [*SERVE, "--http", f"127.0.0.1:{busy_port}", "--log-format", "json"]
    code, stderr = run([*argv, "--db", str(tmp_path / "t.db")], tmp_path)
    assert code == 4, stderr
    (line,) = stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "CRITICAL"
    assert record["exit_code"] == 4
    assert f"cannot listen on 127.0.0.1:{busy_port}" in record["message"]


def test_a_span_file_that_cannot_be_written_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    spans = tmp_path / "no-such-folder" / "spans.jsonl"
    config.write_text(f'[tracing]\nexporter = "file"\nfile = "{spans}"\n')
    db = tmp_path / "tasks.db"
    code, stderr = run([*SERVE, "--db", str(db), "--config", str(config)], tmp_path)
    assert code == 2, stderr
    assert "tracing.file" in assert_one_line(stderr)
    assert not db.exists()
