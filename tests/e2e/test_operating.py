"""Operating it: ``/metrics``, ``/healthz``, ``/readyz`` and the operator commands.

Two ``mcp-tasks serve --http`` processes (A and B) share one journal; the
operator commands run as a third process on it, exactly as an operator runs
them next to live servers. Metrics are parsed with prometheus-client's own
parser. Alice's concurrency is 1, so her second and later tasks stay queued
while the first one (a ``gate``) holds her slot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncGenerator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mcp_tasks.client import TaskClient

from .conftest import ServerFilesFactory
from .support import TIMEOUT, Gates, HttpServer, start_task, text_of

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
ASK_TOOL = ROOT / "tools" / "ask.py"
ALICE = "alice-operating-token-0123456789"
OPERATOR = "operator-token-0123456789abcdef"
ELICIT: dict[str, Any] = {"elicitation": {"form": {}}}

#: ``(name, labels) -> value`` of every sample of one scrape.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def pair(server_files: ServerFilesFactory) -> Iterator[tuple[HttpServer, HttpServer]]:
    """Servers A and B on one journal, with tokens; ``/healthz`` open to all."""
    files = server_files(
        "operating-a",
        tokens=[{"id": "alice", "token": ALICE, "concurrency": 1}],
        operators=[{"id": "ops", "token": OPERATOR}],
        extra_toml='\n[http]\nopen_endpoints = ["/healthz"]\n',
    )
    other = replace(files, root=files.root.with_name("operating-b"))
    other.root.mkdir(exist_ok=True)
    servers = [
        HttpServer(f, extra_args=["--tools", str(ASK_TOOL)]) for f in (files, other)
    ]
    try:
        for server in servers:
            server.start()
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def base(server: HttpServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def get(
    server: HttpServer, path: str, token: str | None = OPERATOR
) -> httpx2.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        return await http.get(base(server) + path, headers=headers)


async def scrape(server: HttpServer) -> Samples:
    """Every sample of the server's ``/metrics``, parsed by prometheus-client."""
    response = await get(server, "/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def cli(db: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``mcp-tasks ARGS --db DB`` as its own process (an operator's shell)."""
    with anyio.fail_after(2 * TIMEOUT):
        return await anyio.run_process(
            [sys.executable, "-m", "mcp_tasks", *args, "--db", str(db)], check=False
        )


async def cli_json(db: Path, *args: str) -> Any:
    done = await cli(db, *args, "--json")
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def ours(rows: list[dict[str, Any]], *task_ids: str) -> list[dict[str, Any]]:
    """The rows of these tasks (the journal is shared with other tests here)."""
    return [row for row in rows if row["taskId"] in task_ids]


@pytest.fixture
async def alice(
    pair: tuple[HttpServer, HttpServer],
) -> AsyncGenerator[TaskClient]:
    """Alice on server A."""
    async with TaskClient.http(pair[0].url, token=ALICE, capabilities=ELICIT) as c:
        yield c


# ------------------------------------------------------------------ metrics


async def test_gauges_of_one_process_count_the_tasks_submitted_through_another(
    pair: tuple[HttpServer, HttpServer], alice: TaskClient, gates: Gates
) -> None:
    a, b = pair
    keys = [gates.key() for _ in range(3)]
    tasks = [await start_task(alice, "gate", {"key": key}) for key in keys]
    await gates.hub.wait("started", keys[0])
    samples = await scrape(b)
    assert value(samples, "mcp_tasks_running", client="alice") == 1
    assert value(samples, "mcp_tasks_queued", client="alice") == 2
    assert value(samples, "mcp_tasks_oldest_queued_age_seconds", client="alice") > 0
    assert value(samples, "mcp_tasks_workers_limit") == 16
    before = [await scrape(server) for server in pair]
    for key in keys:
        await gates.hub.wait("started", key)
        gates.release(key)
    with anyio.fail_after(TIMEOUT):
        for task in tasks:
            done = await alice.poll_task(str(task["taskId"]))
            assert done["status"] == "completed"
    after = [await scrape(server) for server in pair]
    assert value(after[1], "mcp_tasks_queued", client="alice") == 0

    def grown(name: str, **labels: str) -> float:
        return sum(
            value(later, name, **labels) - value(earlier, name, **labels)
            for earlier, later in zip(before, after, strict=True)
        )

    # Counters are per process: their sum over A and B is every task.
    finished = {"client": "alice", "tool": "gate", "status": "completed"}
    assert grown("mcp_tasks_finished_total", **finished) == 3
    assert grown("mcp_tasks_run_seconds_count", tool="gate") == 3
    # The first had started before the first scrape: two more started since.
    assert grown("mcp_tasks_queue_wait_seconds_count") == 2
    # Every commit of a process is one observation, of at least one write.
    commits = grown("mcp_tasks_journal_commit_seconds_count")
    assert commits > 0
    assert grown("mcp_tasks_journal_commit_writes_count") == commits
    assert grown("mcp_tasks_journal_commit_writes_sum") >= commits
    for samples in after:
        assert value(samples, "process_resident_memory_bytes") > 0
    assert a.port != b.port


async def test_a_cancel_counts_as_finished_cancelled_where_it_was_asked(
    pair: tuple[HttpServer, HttpServer], alice: TaskClient, gates: Gates
) -> None:
    key = gates.key()
    task = await start_task(alice, "gate", {"key": key})
    await gates.hub.wait("started", key)
    labels = {"client": "alice", "tool": "gate", "status": "cancelled"}
    before = value(await scrape(pair[0]), "mcp_tasks_finished_total", **labels)
    await alice.cancel_task(str(task["taskId"]))
    after = value(await scrape(pair[0]), "mcp_tasks_finished_total", **labels)
    assert after == before + 1
    # The task's history says the client cancelled it (the audit trail).
    shown = await cli_json(pair[1].files.db, "tasks", "show", str(task["taskId"]))
    (cancel,) = [
        e
        for e in shown["events"]
        if (e["kind"], e["status"]) == ("status", "cancelled")
    ]
    assert cancel["by"] == "client:alice"


# ------------------------------------------------------------------- health


async def test_operator_endpoints_take_an_operator_token_not_a_clients(
    pair: tuple[HttpServer, HttpServer],
) -> None:
    server = pair[1]
    for path in ("/metrics", "/readyz"):
        assert (await get(server, path, token=None)).status_code == 401
        assert (await get(server, path, token=ALICE)).status_code == 401
        assert (await get(server, path, token="x" * 32)).status_code == 401
        refused = await get(server, path, token=None)
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "operator token" in refused.json()["message"]
    ready = await get(server, "/readyz")
    assert (ready.status_code, ready.text) == (200, "ready\n")
    # Opened in the config: a load balancer needs no token.
    health = await get(server, "/healthz", token=None)
    assert (health.status_code, health.text) == (200, "ok\n")
    # The MCP endpoint is still the clients' (an operator token is no client's).
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        mcp = await http.post(
            server.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Authorization": f"Bearer {OPERATOR}"},
        )
    assert mcp.status_code == 401


async def test_operator_endpoints_answer_only_get(
    pair: tuple[HttpServer, HttpServer],
) -> None:
    async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
        posted = await http.post(
            base(pair[0]) + "/metrics", headers={"Authorization": f"Bearer {OPERATOR}"}
        )
    assert posted.status_code == 405
    assert posted.headers["allow"] == "GET, HEAD"


async def test_readyz_fails_once_the_journal_file_is_pulled_away(
    server_files: ServerFilesFactory,
) -> None:
    server = HttpServer(server_files("operating-ready"))
    try:
        server.start()
        assert (await get(server, "/readyz", token=None)).status_code == 200
        assert (await get(server, "/healthz", token=None)).status_code == 200
        server.files.db.rename(server.files.db.with_suffix(".moved"))
        ready = await get(server, "/readyz", token=None)
        assert ready.status_code == 503
        assert "journal not writable" in ready.text
        # Alive all the same: restarting it is the operator's call.
        assert (await get(server, "/healthz", token=None)).status_code == 200
        metrics = await get(server, "/metrics", token=None)
        assert metrics.status_code in (200, 503)
    finally:
        server.stop()


async def test_an_open_endpoint_that_does_not_exist_is_a_config_error(
    server_files: ServerFilesFactory,
) -> None:
    files = server_files(
        "operating-bad-open",
        extra_toml='\n[http]\nopen_endpoints = ["/nowhere"]\n',
    )
    server = HttpServer(files)
    with pytest.raises(RuntimeError, match="exited with 2"):
        server.start()
    assert "http.open_endpoints" in server.log_text()
    assert "/nowhere" in server.log_text()


# ----------------------------------------------------------------- commands


async def test_tasks_list_shows_every_process_tasks_with_filters(
    pair: tuple[HttpServer, HttpServer], alice: TaskClient, gates: Gates
) -> None:
    key = gates.key()
    running = await start_task(alice, "gate", {"key": key})
    await gates.hub.wait("started", key)
    async with TaskClient.http(pair[1].url, token=ALICE) as through_b:
        queued = await start_task(through_b, "echo", {"text": "later"})
    ids = (str(running["taskId"]), str(queued["taskId"]))
    db = pair[0].files.db
    rows = ours(await cli_json(db, "tasks", "list", "--client", "alice"), *ids)
    assert [r["taskId"] for r in rows] == [ids[1], ids[0]]  # newest first
    assert [r["phase"] for r in rows] == ["queued", "running"]
    assert rows[1]["holder"]
    assert rows[1]["attempts"] == 1
    assert ours(await cli_json(db, "tasks", "list", "--client", "bob"), *ids) == []
    completed = await cli_json(db, "tasks", "list", "--status", "completed")
    assert ours(completed, *ids) == []
    human = await cli(db, "tasks", "list", "--client", "alice")
    assert human.returncode == 0
    assert ids[0][:8] in human.stdout.decode()
    gates.release(key)
    with anyio.fail_after(TIMEOUT):
        await alice.poll_task(ids[1])


async def test_tasks_cancel_stops_the_run_on_whichever_process_runs_it(
    pair: tuple[HttpServer, HttpServer], alice: TaskClient, gates: Gates
) -> None:
    key = gates.key()
    task = await start_task(alice, "gate", {"key": key})
    task_id = str(task["taskId"])
    await gates.hub.wait("started", key)
    done = await cli(pair[1].files.db, "tasks", "cancel", task_id)
    assert done.returncode == 0, done.stderr.decode()
    assert "cancelled" in done.stdout.decode()
    await gates.hub.wait("stopped", key)  # the run itself was stopped
    got = await alice.get_task(task_id)
    assert got["status"] == "cancelled"
    shown = await cli_json(pair[0].files.db, "tasks", "show", task_id)
    (cancel,) = [
        e
        for e in shown["events"]
        if (e["kind"], e["status"]) == ("status", "cancelled")
    ]
    assert cancel["reason"] == "cancelled by operator"
    assert cancel["by"].startswith("operator:")  # user@host of the command
    again = await cli(pair[0].files.db, "tasks", "cancel", task_id)
    assert again.returncode == 1
    assert "terminal status 'cancelled'" in again.stderr.decode()


async def test_tasks_show_and_answer_resume_a_waiting_task(
    pair: tuple[HttpServer, HttpServer], alice: TaskClient
) -> None:
    task = await start_task(alice, "ask", {"question": "Ship it?"})
    task_id = str(task["taskId"])
    with anyio.fail_after(TIMEOUT):
        await alice.poll_task(task_id, until={"input_required"})
    db = pair[1].files.db
    shown = await cli_json(db, "tasks", "show", task_id)
    assert shown["status"] == "input_required"
    (question,) = [q for q in shown["questions"] if q["open"]]
    assert question["message"] == "Ship it?"
    human = await cli(db, "tasks", "show", task_id)
    assert "Ship it?" in human.stdout.decode()
    wrong = await cli(
        db, "tasks", "answer", task_id, "no-such-key", '{"action": "accept"}'
    )
    assert wrong.returncode == 1
    assert "no open question" in wrong.stderr.decode()
    unfit = await cli(db, "tasks", "answer", task_id, question["key"], '{"action": 7}')
    assert unfit.returncode == 1
    not_json = await cli(db, "tasks", "answer", task_id, question["key"], "{")
    assert not_json.returncode == 2
    answer = {"action": "accept", "content": {"answer": "yes"}}
    done = await cli(
        db, "tasks", "answer", task_id, question["key"], json.dumps(answer)
    )
    assert done.returncode == 0, done.stderr.decode()
    assert "resumes" in done.stdout.decode()
    with anyio.fail_after(TIMEOUT):
        finished = await alice.poll_task(task_id)
    assert finished["status"] == "completed"
    result = await alice.task_result(task_id)
    assert "yes" in text_of(result)
    shown = await cli_json(db, "tasks", "show", task_id)
    (answered,) = [e for e in shown["events"] if e["kind"] == "answer"]
    assert answered["by"].startswith("operator:")


async def test_tasks_retry_runs_a_failed_task_again_as_a_new_attempt(
    pair: tuple[HttpServer, HttpServer], alice: TaskClient
) -> None:
    task = await start_task(alice, "protocol_error", {"code": -32001, "message": "no"})
    task_id = str(task["taskId"])
    with anyio.fail_after(TIMEOUT):
        assert (await alice.poll_task(task_id))["status"] == "failed"
    db = pair[1].files.db
    done = await cli(db, "tasks", "retry", task_id, "--tools", str(ASK_TOOL))
    assert done.returncode == 1  # this command line does not serve that tool
    assert "not loaded" in done.stderr.decode()
    e2e_tools = ROOT / "tests" / "e2e" / "e2e_tools.py"
    done = await cli(db, "tasks", "retry", task_id, "--tools", str(e2e_tools))
    assert done.returncode == 0, done.stderr.decode()
    with anyio.fail_after(TIMEOUT):
        while True:  # the next attempt runs on A or B, and fails again
            (row,) = ours(await cli_json(db, "tasks", "list"), task_id)
            if row["attempts"] == 2 and row["status"] == "failed":
                break
            await alice.poll_task(task_id)
    shown = await cli_json(db, "tasks", "show", task_id)
    (retried,) = [e for e in shown["events"] if e["reason"] == "retried by operator"]
    assert retried["by"].startswith("operator:")
    completed = await start_task(alice, "echo", {"text": "fine"})
    with anyio.fail_after(TIMEOUT):
        await alice.poll_task(str(completed["taskId"]))
    refused = await cli(
        db, "tasks", "retry", str(completed["taskId"]), "--tools", str(e2e_tools)
    )
    assert refused.returncode == 1
    assert "cannot move from 'completed'" in refused.stderr.decode()


async def test_stats_and_top_show_each_clients_queue_and_each_process(
    pair: tuple[HttpServer, HttpServer], alice: TaskClient, gates: Gates
) -> None:
    keys = [gates.key() for _ in range(2)]
    for key in keys:
        await start_task(alice, "gate", {"key": key})
    await gates.hub.wait("started", keys[0])
    db = pair[0].files.db
    stats = await cli_json(db, "stats")
    (mine,) = [c for c in stats["clients"] if c["client"] == "alice"]
    assert (mine["running"], mine["queued"], mine["concurrency"]) == (1, 1, 1)
    assert mine["oldestQueuedAgeSeconds"] >= 0
    assert sum(p["running"] for p in stats["processes"]) >= 1
    top = await cli(db, "top", "-n", "2", "--interval", "0.01")
    assert top.returncode == 0, top.stderr.decode()
    screen = top.stdout.decode()
    assert screen.count("clients at") == 2
    assert "alice" in screen
    for key in keys:
        await gates.hub.wait("started", key)
        gates.release(key)


def test_top_on_a_terminal_redraws_in_place(
    pair: tuple[HttpServer, HttpServer],
) -> None:
    master, slave = os.openpty()
    argv = [sys.executable, "-m", "mcp_tasks", "top", "-n", "3"]
    argv += ["--interval", "0.01", "--db", str(pair[0].files.db)]
    try:
        process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True
        )
    finally:
        os.close(slave)
    screen = b""
    try:
        while True:  # until the command ends and the terminal reports EIO
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        code = process.wait(TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    assert code == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    assert "clients at" in text
    # Redrawn: the cursor moves back up over the previous table.
    assert "\x1b[" in text
    assert "\x1b[2K" in text or "\x1b[1A" in text


async def test_commands_refuse_a_journal_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    done = await cli(missing, "stats")
    assert done.returncode == 3
    assert "no journal there" in done.stderr.decode()
    assert not missing.exists()
    unknown = await cli(tmp_path / "nope.db", "tasks", "show", "x")
    assert unknown.returncode == 3


async def test_show_of_an_unknown_task_is_refused(
    pair: tuple[HttpServer, HttpServer],
) -> None:
    done = await cli(pair[0].files.db, "tasks", "show", "no-such-task")
    assert done.returncode == 1
    assert "Task not found" in done.stderr.decode()
