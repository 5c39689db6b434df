"""Three ``mcp-tasks serve --http`` replicas on one PostgreSQL, nginx in front.

The balancer is `SessionRoute` (the README's nginx example): requests
without a session, which is every 2026-07-28 request and a 2025-11-25
``initialize``, go round robin over the replicas; a 2025-11-25 session stays
on the replica that created it, named in the session id the client sees
(``r<n>.<id>``). nginx runs one worker, so round robin is a strict rotation.

Each replica has ``workers = 2``: six ``placed`` runs at once fill the three
replicas, two each, and the runs record their replica's name, so a test knows
which replica runs what without asking any of them. For the ``kill -9`` test
each replica runs in a pid namespace of its own (``unshare``, as root), as if
on a machine of its own: no replica can see that another's pid is gone, so
its tasks are taken over only when their lease runs out. Tasks submitted through the
balancer are spread over the replicas; every task method works whichever
replica answers; a question asked by a run on one replica is pushed to a
2025-11-25 session held by another; a replica killed with ``kill -9`` or
stopped with SIGTERM loses no acknowledged task; a client's cap of 2 holds
across the three, read from the bodies' own start and end times.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from mcp_tasks.client import JSONObject, TaskClient

from ..nginx_server import NginxServer, SessionRoute, running_nginx
from ..pg_server import fresh_database
from .support import (
    E2E_TOOLS,
    TIMEOUT,
    EventHub,
    Gates,
    obj,
    objects,
    rpc_error,
    text_of,
)
from .test_many_processes import (
    ASK_TOOL,
    ELICIT,
    LEGACY,
    MODERN,
    Replica,
    create,
    poll_until,
    result_text,
)

pytestmark = pytest.mark.timeout(180)

REPLICA_TOOLS = Path(__file__).with_name("replica_tools.py")
ALICE = "alice-replicas-token-0123456789"
CAPPED = "capped-replicas-token-0123456789"
#: Per replica: three replicas run at most six tasks at once.
WORKERS = 2
REPLICAS = 3
SLOTS = WORKERS * REPLICAS
INVALID_REQUEST = -32600
#: Short leases: a killed replica's tasks are taken over within the test.
LEASE_SECONDS = 2.0


@dataclass(frozen=True)
class Run:
    """One run of ``placed``, as its body recorded it."""

    task_id: str
    attempt: int
    replica: str
    start: int
    end: int | None


@dataclass
class Cluster:
    """Replicas on one database, and the balancer in front of them."""

    root: Path
    url: str
    #: Each replica in a pid namespace of its own, as if on its own machine:
    #: no replica can see another's pid, so only a lease running out tells
    #: them one is gone.
    machines: bool = False
    replicas: list[Replica] = field(default_factory=list[Replica])
    balancer: NginxServer | None = None

    @property
    def runs_file(self) -> Path:
        return self.root / "runs.txt"

    @property
    def balancer_url(self) -> str:
        assert self.balancer is not None
        return f"{self.balancer.base_url}/mcp"

    def write_config(self, events: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.toml").write_text(
            f"""[limits]
workers = {WORKERS}
client_concurrency = 8
lease_seconds = {LEASE_SECONDS}
poll_interval_seconds = 0.2
shutdown_grace_seconds = 0.2
sweep_interval_seconds = 3600

[journal]
db = "{self.url}"
feed_poll_seconds = 0.05

[clients.capped]
concurrency = 2

[tools.gate]
events = "{events}"

[tools.placed]
events = "{events}"
runs = "{self.runs_file}"
"""
        )
        (self.root / "tokens.toml").write_text(
            f'[[client]]\nid = "alice"\ntoken = "{ALICE}"\n\n'
            f'[[client]]\nid = "capped"\ntoken = "{CAPPED}"\n'
        )

    def start(self, stack: ExitStack) -> None:
        """Start the replicas (together), then nginx in front of them."""
        for n in range(1, REPLICAS + 1):
            # `env` execs the server (same pid); `unshare --kill-child` takes
            # the server down with it on kill -9.
            argv = ["env", f"TEST_REPLICA_NAME=r{n}"]
            if self.machines:
                argv = ["unshare", "--pid", "--fork", "--kill-child", *argv]
            argv += [
                sys.executable, "-m", "mcp_tasks", "serve",
                "--http", "127.0.0.1:0", "--log-level", "INFO",
                "--config", str(self.root / "config.toml"),
                "--tokens", str(self.root / "tokens.toml"),
                "--tools", str(E2E_TOOLS), "--tools", str(REPLICA_TOOLS),
                "--tools", str(ASK_TOOL),
            ]  # fmt: skip
            self.replicas.append(Replica(f"r{n}", argv, self.root / f"r{n}.log"))
        stack.callback(self.stop_all)
        with ThreadPoolExecutor(REPLICAS) as pool:
            list(pool.map(Replica.start, self.replicas))
        route = SessionRoute("/mcp", [r.port for r in self.replicas])
        self.balancer = stack.enter_context(running_nginx([route]))

    def stop_all(self) -> None:
        for replica in self.replicas:
            replica.stop()

    def named(self, name: str) -> Replica:
        (found,) = [r for r in self.replicas if r.name == name]
        return found

    def holding(self, session_id: str | None) -> Replica:
        """The replica a balancer session id names (``r<n>.<id>``)."""
        assert session_id is not None
        name, dot, _ = session_id.partition(".")
        assert dot, f"the balancer did not name the replica: {session_id}"
        return self.named(name)

    def runs(self) -> list[Run]:
        """Every run of ``placed`` so far, in start order."""
        starts: dict[tuple[str, int], tuple[str, int]] = {}
        ends: dict[tuple[str, int], int] = {}
        text = self.runs_file.read_text() if self.runs_file.exists() else ""
        for line in text.splitlines():
            kind, task_id, attempt, replica, at = line.split()
            key = (task_id, int(attempt))
            if kind == "start":
                starts[key] = (replica, int(at))
            else:
                ends[key] = int(at)
        made = [
            Run(task_id, attempt, replica, start, ends.get((task_id, attempt)))
            for (task_id, attempt), (replica, start) in starts.items()
        ]
        return sorted(made, key=lambda run: run.start)

    def placement(self, task_ids: Sequence[str]) -> dict[str, Replica]:
        """Which replica runs (ran) the latest attempt of each task."""
        latest = {run.task_id: run for run in self.runs() if run.task_id in task_ids}
        return {task_id: self.named(run.replica) for task_id, run in latest.items()}


def _cluster(
    root: Path, events: Path, postgres_url: str, stack: ExitStack, *, machines: bool
) -> Cluster:
    url = stack.enter_context(fresh_database(postgres_url))
    cluster = Cluster(root, url, machines)
    cluster.write_config(events)
    cluster.start(stack)
    return cluster


@pytest.fixture(scope="module")
def shared(e2e_root: Path, events_path: Path, postgres_url: str) -> Iterator[Cluster]:
    """Three replicas and their balancer for the tests that stop none of them."""
    with ExitStack() as stack:
        yield _cluster(
            e2e_root / "replicas", events_path, postgres_url, stack, machines=False
        )


@pytest.fixture
def fresh(tmp_path: Path, events_path: Path, postgres_url: str) -> Iterator[Cluster]:
    """A cluster of this test's own, for tests that stop a replica."""
    with ExitStack() as stack:
        yield _cluster(
            tmp_path / "own", events_path, postgres_url, stack, machines=False
        )


@pytest.fixture
def machines(tmp_path: Path, events_path: Path, postgres_url: str) -> Iterator[Cluster]:
    """A cluster of this test's own, each replica as if on a machine of its own."""
    with ExitStack() as stack:
        yield _cluster(
            tmp_path / "own", events_path, postgres_url, stack, machines=True
        )


@asynccontextmanager
async def connect(
    url: str,
    wire: str,
    *,
    token: str = ALICE,
    on_request: Any = None,
    capabilities: Mapping[str, Any] | None = None,
) -> AsyncGenerator[TaskClient]:
    async with TaskClient.http(
        url,
        token=token,
        wire=wire,  # type: ignore[arg-type]
        capabilities=capabilities,
        on_request=on_request,
    ) as opened:
        yield opened


async def fill(
    cluster: Cluster, on: TaskClient, gates: Gates, hub: EventHub
) -> dict[str, str]:
    """Six ``placed`` tasks through ``on``, all running: task id -> gate key.

    Two workers per replica: six runs at once are two on each replica.
    """
    keys: dict[str, str] = {}
    for _ in range(SLOTS):
        key = gates.key()
        keys[await create(on, "placed", {"key": key})] = key
    for key in keys.values():
        await hub.wait("started", key)
    return keys


async def wait_started(hub: EventHub, keys: Sequence[str], count: int) -> None:
    """Wait until ``count`` of the bodies for ``keys`` have started."""
    enough = anyio.Event()
    started = 0

    async def one(key: str) -> None:
        nonlocal started
        await hub.wait("started", key)
        started += 1
        if started == count:
            enough.set()

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(one, key)
            await enough.wait()
            tg.cancel_scope.cancel()


async def listed_tasks(session: TaskClient) -> dict[str, str]:
    """``tasks/list`` (2025-11-25), every page: task id -> status."""
    listed: dict[str, str] = {}
    cursor: str | None = None
    while True:
        page = obj(await session.list_tasks(cursor))
        listed |= {str(t["taskId"]): str(t["status"]) for t in objects(page["tasks"])}
        cursor = page.get("nextCursor")  # type: ignore[assignment]
        if cursor is None:
            return listed


# ------------------------------------------------------------------ the tests


async def test_tasks_submitted_through_the_balancer_are_spread_over_the_replicas(
    shared: Cluster, gates: Gates, hub: EventHub
) -> None:
    async with connect(shared.balancer_url, MODERN) as on:
        keys = await fill(shared, on, gates, hub)
        placed = shared.placement(list(keys))
        per_replica = {r.name: 0 for r in shared.replicas}
        for replica in placed.values():
            per_replica[replica.name] += 1
        assert per_replica == {r.name: WORKERS for r in shared.replicas}
        for key in keys.values():
            gates.release(key)
        for task_id, key in keys.items():
            done = await poll_until(on, task_id, {"completed"})
            assert result_text(on, done) == f"placed {key}"
    # Six requests in a row, round robin: each replica accepted two of them
    # (whichever replica then ran them), as its log says.
    for replica in shared.replicas:
        log = replica.log_text()
        accepted = [t for t in keys if f"task {t} placed owner=alice: accepted" in log]
        assert len(accepted) == len(keys) // REPLICAS, (replica.name, accepted)


async def test_every_task_method_works_whichever_replica_answers_modern(
    shared: Cluster, gates: Gates, hub: EventHub
) -> None:
    direct = [f"{r.url}" for r in shared.replicas]
    async with (
        connect(shared.balancer_url, MODERN, capabilities=ELICIT) as on,
        connect(direct[0], MODERN, capabilities=ELICIT) as on_1,
        connect(direct[1], MODERN, capabilities=ELICIT) as on_2,
        connect(direct[2], MODERN, capabilities=ELICIT) as on_3,
    ):
        each = [on_1, on_2, on_3]
        to_cancel, to_finish = gates.key(), gates.key()
        cancelled = await create(on, "gate", {"key": to_cancel})
        finished = await create(on, "gate", {"key": to_finish})
        await hub.wait("started", to_cancel)
        await hub.wait("started", to_finish)
        for replica in [on, *each]:  # tasks/get on every replica
            for task_id in (cancelled, finished):
                assert obj(await replica.get_task(task_id))["status"] == "working"
        await on_2.cancel_task(cancelled)
        await hub.wait("stopped", to_cancel)  # the body itself was stopped
        assert obj(await on_3.get_task(cancelled))["status"] == "cancelled"
        gates.release(to_finish)
        done = await poll_until(on_1, finished, {"completed"})
        assert result_text(on_1, done) == f"released {to_finish}"
        asked = await create(
            on, "ask", {"question": "Which way?", "choices": ["left", "right"]}
        )
        waiting = await poll_until(on_3, asked, {"input_required"})
        (question,) = obj(waiting["inputRequests"]).keys()
        answer = {"action": "accept", "content": {"answer": "left"}}
        await on.update_task(asked, {question: answer})  # tasks/update, round robin
        done = await poll_until(on_2, asked, {"completed"})
    assert result_text(on_2, done) == "left"
    assert not hub.seen("released", to_cancel)


async def test_every_task_method_works_whichever_replica_answers_legacy(
    shared: Cluster, gates: Gates, hub: EventHub
) -> None:
    url = shared.balancer_url
    async with (
        connect(url, LEGACY) as s_1,
        connect(url, LEGACY) as s_2,
        connect(url, LEGACY) as s_3,
    ):
        sessions = [s_1, s_2, s_3]
        # Three initializes in a row, round robin: a session on each replica,
        # and every later request of a session reaches its replica.
        held = {shared.holding(s.session_id).name for s in sessions}
        assert held == {r.name for r in shared.replicas}
        to_cancel, to_finish = gates.key(), gates.key()
        cancelled = await create(s_1, "gate", {"key": to_cancel})
        finished = await create(s_1, "gate", {"key": to_finish})
        await hub.wait("started", to_cancel)
        await hub.wait("started", to_finish)
        for session in sessions:
            for task_id in (cancelled, finished):
                assert obj(await session.get_task(task_id))["status"] == "working"
            listed = await listed_tasks(session)
            assert listed[cancelled] == listed[finished] == "working"
        await s_2.cancel_task(cancelled)
        await hub.wait("stopped", to_cancel)
        assert obj(await s_3.get_task(cancelled))["status"] == "cancelled"
        results: list[JSONObject] = []

        async def hold() -> None:
            results.append(await s_3.task_result(finished))

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold)
                await anyio.wait_all_tasks_blocked()
                assert results == []  # held on one replica while another runs it
                gates.release(to_finish)
        with anyio.fail_after(TIMEOUT):
            again = await s_2.task_result(finished)
    assert text_of(results[0]) == text_of(again) == f"released {to_finish}"


async def test_a_question_asked_on_one_replica_is_pushed_to_a_session_on_another(
    shared: Cluster, gates: Gates, hub: EventHub
) -> None:
    asked: list[JSONObject] = []

    async def answer(method: str, params: JSONObject) -> JSONObject:
        asked.append(params)
        return {"action": "accept", "content": {"answer": "right"}}

    async def never(method: str, params: JSONObject) -> JSONObject:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    url = shared.balancer_url
    async with (
        connect(url, LEGACY, capabilities=ELICIT, on_request=answer) as answering,
        connect(url, MODERN) as on,
    ):
        holder = shared.holding(answering.session_id)
        # Fill every worker, then free all but the session's replica's: the
        # question's run can only go to another replica.
        keys = await fill(shared, on, gates, hub)
        placed = shared.placement(list(keys))
        for task_id, replica in placed.items():
            if replica is not holder:
                gates.release(keys[task_id])
                await poll_until(on, task_id, {"completed"})
        async with connect(
            url, LEGACY, capabilities=ELICIT, on_request=never
        ) as asking:
            task_id = await create(
                asking, "ask", {"question": "Which way?", "choices": ["left", "right"]}
            )
            done = await poll_until(on, task_id, {"completed"})
            with anyio.fail_after(TIMEOUT):
                payload = await asking.task_result(task_id)
        for key in keys.values():
            gates.release(key)
    assert text_of(payload) == "right"
    assert [p["message"] for p in asked] == ["Which way?"]
    assert done["status"] == "completed"
    (asked_on,) = [
        r
        for r in shared.replicas
        if f"task {task_id} ask" in r.log_text()
        and "input_required" in _lines_of(r, task_id)
    ]
    assert asked_on is not holder


def _lines_of(replica: Replica, task_id: str) -> str:
    return "\n".join(
        line for line in replica.log_text().splitlines() if f"task {task_id} " in line
    )


async def test_a_clients_cap_of_two_holds_across_the_replicas(
    shared: Cluster, gates: Gates, hub: EventHub
) -> None:
    async with connect(shared.balancer_url, MODERN) as alice:
        # Every worker busy (two per replica), then one freed on each replica:
        # the capped client's two runs at once must be on two replicas.
        filler = await fill(shared, alice, gates, hub)
        placed = shared.placement(list(filler))
        freed = [
            next(t for t in filler if placed[t] is replica)
            for replica in shared.replicas
        ]
        for task_id in freed:
            gates.release(filler[task_id])
            await poll_until(alice, task_id, {"completed"})
        keys = [gates.key() for _ in range(SLOTS)]
        async with connect(shared.balancer_url, MODERN, token=CAPPED) as on:
            task_ids = [await create(on, "placed", {"key": key}) for key in keys]
            await wait_started(hub, keys, 2)
            for key in keys:
                gates.release(key)
            for task_id in task_ids:
                await poll_until(on, task_id, {"completed"})
        for task_id in filler.keys() - freed:
            gates.release(filler[task_id])
            await poll_until(alice, task_id, {"completed"})
    runs = [run for run in shared.runs() if run.task_id in task_ids]
    assert len(runs) == SLOTS
    edges = sorted(
        [(run.start, 1) for run in runs] + [(run.end or 0, -1) for run in runs],
        key=lambda edge: (edge[0], edge[1]),  # an end before a start at a tie
    )
    running = list(itertools.accumulate(step for _, step in edges))
    assert max(running) == 2, f"capped at 2, ran at once: {max(running)}"
    # One free worker per replica: the two at once ran on two replicas.
    first_two = sorted(runs, key=lambda run: run.start)[:2]
    assert first_two[0].replica != first_two[1].replica


async def test_a_killed_replica_s_tasks_are_finished_by_the_others_after_its_lease(
    machines: Cluster, gates: Gates, hub: EventHub
) -> None:
    fresh = machines
    async with connect(fresh.balancer_url, MODERN) as on:
        keys = await fill(fresh, on, gates, hub)
        placed = fresh.placement(list(keys))
        victim = fresh.replicas[0]
        lost = [t for t, replica in placed.items() if replica is victim]
        for task_id in keys.keys() - lost:
            gates.release(keys[task_id])
            await poll_until(on, task_id, {"completed"})
        async with AsyncExitStack() as sessions:
            # Round robin: one of three new sessions is on the victim.
            opened = [
                await sessions.enter_async_context(connect(fresh.balancer_url, LEGACY))
                for _ in range(REPLICAS)
            ]
            (pinned,) = [s for s in opened if fresh.holding(s.session_id) is victim]
            await anyio.to_thread.run_sync(victim.kill)
            # Its session is gone with it: 404, so the client starts a new one.
            gone = await rpc_error(lambda: pinned.get_task(lost[0]))
            assert (gone.code, gone.message) == (
                INVALID_REQUEST,
                "Session not found: its replica is gone",
            )
        # Acknowledged while the victim is dead: nginx passes them on.
        later = [await create(on, "echo", {"text": f"after {n}"}) for n in range(3)]
        for task_id in lost:
            await hub.wait("started", keys[task_id], attempt=2)
        retaken = fresh.placement(lost)
        assert victim not in retaken.values()
        # Taken over because the lease ran out: nobody could see the pid.
        survivors = "".join(r.log_text() for r in fresh.replicas[1:])
        assert "is gone" not in survivors
        for task_id in lost:
            assert re.search(rf"task {task_id} .*the lease of \S+ ran out", survivors)
        for task_id in lost:
            gates.release(keys[task_id])
        for task_id in [*keys, *later]:
            await poll_until(on, task_id, {"completed"})
    async with connect(fresh.balancer_url, LEGACY) as session:
        listed = await listed_tasks(session)
    # Every task the balancer acknowledged, and nothing else, completed.
    assert listed == dict.fromkeys([*keys, *later], "completed")


async def test_a_replica_stopped_with_sigterm_hands_its_tasks_to_the_others(
    fresh: Cluster, gates: Gates, hub: EventHub
) -> None:
    async with connect(fresh.balancer_url, MODERN) as on:
        keys = await fill(fresh, on, gates, hub)
        placed = fresh.placement(list(keys))
        leaving = fresh.replicas[1]
        handed = [t for t, replica in placed.items() if replica is leaving]
        for task_id in keys.keys() - handed:
            gates.release(keys[task_id])
            await poll_until(on, task_id, {"completed"})
        await anyio.to_thread.run_sync(leaving.stop)
        assert leaving.process is not None
        assert leaving.process.returncode == 0, leaving.log_text()
        assert (
            f"stopping {len(handed)} tasks and handing them back" in leaving.log_text()
        )
        for task_id in handed:
            await hub.wait("started", keys[task_id], attempt=2)
        assert leaving not in fresh.placement(handed).values()
        for task_id in handed:
            gates.release(keys[task_id])
        for task_id, key in keys.items():
            done = await poll_until(on, task_id, {"completed"})
            assert result_text(on, done) == f"placed {key}"
    # The first runs on the leaving replica ended (were stopped) before it exited.
    first = [r for r in fresh.runs() if r.task_id in handed and r.attempt == 1]
    assert len(first) == len(handed)
    assert all(run.end is not None for run in first)
