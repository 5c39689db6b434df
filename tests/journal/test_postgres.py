"""What only a PostgreSQL server can show: concurrent claimers, exact caps
across connections, a feed that never skips a late commit, LISTEN as a hint
with polling behind it, migrations racing, and a newer schema left alone.

Every journal here is its own pool of connections, as a replica would be.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncGenerator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import psycopg
import pytest

from benchmarks._pg_pooler import find_pgbouncer, pgbouncer
from mcp_tasks._budgets import IDLE_BUCKET_SECONDS, BudgetLimits
from mcp_tasks._exceptions import JournalError, JournalSchemaError
from mcp_tasks._model import InputRequest, OwnerId, TaskId, TaskStatus
from mcp_tasks.engine._feed import Feed
from mcp_tasks.journal import (
    Change,
    Journal,
    Lease,
    Recovery,
    Resealed,
    open_journal,
    sealing_from,
)
from mcp_tasks.journal._sealing import add_key
from mcp_tasks.journal._sql import migrations, queries
from mcp_tasks.journal.postgres import PostgresJournal
from mcp_tasks.journal.postgres._journal import PURGE_BATCH
from mcp_tasks.journal.postgres._listener import CHANNEL
from mcp_tasks.journal.postgres._schema import PACKAGE, redacted, supported_version
from mcp_tasks.journal.sqlite import _rows

from .contract.support import ACTOR, LEASE, T0, complete, new_task, submit_and_claim

CLAIMERS = 8


@asynccontextmanager
async def journals(
    url: str, count: int, *, prepared_statements: bool = True
) -> AsyncGenerator[list[Journal]]:
    async with AsyncExitStack() as stack:
        opened: list[Journal] = [
            await stack.enter_async_context(
                PostgresJournal.open(
                    url, pool_size=2, prepared_statements=prepared_statements
                )
            )
            for _ in range(count)
        ]
        yield opened


def _sql(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description is not None else []


async def test_eight_claimers_never_claim_one_task_twice(postgres_db_url: str) -> None:
    owners = [OwnerId(f"client-{n}") for n in range(5)]
    async with journals(postgres_db_url, CLAIMERS) as opened:
        for n in range(200):
            await opened[0].submit(new_task(owners[n % 5], concurrency=1000))
        claimed: list[str] = []

        async def claimer(index: int) -> None:
            journal = opened[index]
            while True:
                batch = await journal.claim(f"h/{index}", T0 + LEASE, 3, T0)
                if not batch:
                    return
                claimed.extend(c.task_id for c in batch)

        async with anyio.create_task_group() as tg:
            for index in range(CLAIMERS):
                tg.start_soon(claimer, index)
    assert len(claimed) == 200
    assert not [t for t, n in Counter(claimed).items() if n > 1]


async def test_caps_are_exact_under_concurrent_claims_across_journals(
    postgres_db_url: str,
) -> None:
    cap = 2
    owners = [OwnerId(f"client-{n}") for n in range(3)]
    tasks_each = 40
    async with journals(postgres_db_url, CLAIMERS) as opened:
        for n in range(tasks_each * len(owners)):
            await opened[n % CLAIMERS].submit(new_task(owners[n % 3], concurrency=cap))

        async def worker(index: int) -> None:
            journal = opened[index]
            while True:
                batch = await journal.claim(f"h/{index}", T0 + LEASE, 2, T0)
                if not batch:
                    if not await journal.claimable() and not any(
                        load.queued or load.running for load in await journal.load()
                    ):
                        return
                    await anyio.lowlevel.checkpoint()
                    continue
                for claimed in batch:
                    await anyio.lowlevel.checkpoint()
                    assert await complete(journal, claimed) is not None

        async with anyio.create_task_group() as tg:
            for index in range(CLAIMERS):
                tg.start_soon(worker, index)
    # Every running interval, read back from the journal's history. One
    # client's claims and ends each hold that client's row lock when they take
    # their feed position (the claim locks it; an end's count trigger does),
    # so by position they are in the order they committed.
    rows = _sql(
        postgres_db_url,
        "SELECT owner_id, task_id, reason FROM task_changes "
        "WHERE reason IN ('claimed', 'test') ORDER BY position",
    )
    peak: Counter[object] = Counter()
    running: Counter[object] = Counter()
    for owner, _task, reason in rows:
        running[owner] += 1 if reason == "claimed" else -1
        assert 0 <= running[owner] <= cap, (owner, running[owner])
        peak[owner] = max(peak[owner], running[owner])
    assert sum(1 for _o, _t, r in rows if r == "claimed") == tasks_each * len(owners)
    assert all(running[o] == 0 for o in owners)
    assert set(peak.values()) == {cap}, peak  # the cap was reached, never passed


async def test_the_feed_never_skips_a_change_that_commits_late(
    postgres_db_url: str,
) -> None:
    async with journals(postgres_db_url, 1) as (journal,):
        early = new_task()
        await journal.submit(early)
        start = await journal.feed_head()
        # A transaction takes the lower feed position and commits last.
        slow = await psycopg.AsyncConnection.connect(postgres_db_url)
        try:
            await slow.execute(
                "SELECT add_change(%s, %s, 'log', 'working', NULL, 'late', %s, NULL)",
                (early.task_id, early.owner_id, T0),
            )
            late = new_task()
            await journal.submit(late)
            ((late_pos, late_key), (slow_pos, slow_key)) = [
                *_sql(
                    postgres_db_url,
                    "SELECT position, feed_key::text FROM task_changes WHERE task_id = %s",
                    late.task_id,
                ),
                *(
                    await (
                        await slow.execute(
                            "SELECT position, feed_key::text FROM task_changes "
                            "WHERE reason = 'late'"
                        )
                    ).fetchall()
                ),
            ]
            assert isinstance(slow_pos, int)
            assert isinstance(late_pos, int)
            assert slow_pos < late_pos  # the order this test needs, checked
            assert int(str(slow_key)) < int(str(late_key))
            first = await journal.changes(start, 100)
            # The late commit's change is not visible yet: what is below it
            # must wait rather than be passed by the cursor.
            assert [c.reason for c in first.changes] == []
            await slow.commit()
        finally:
            await slow.close()
        second = await journal.changes(first.cursor, 100)
        assert [(c.task_id, c.reason) for c in second.changes] == [
            (early.task_id, "late"),
            (late.task_id, "submitted"),
        ]
        assert (await journal.changes(second.cursor, 100)).changes == []


async def test_a_notification_wakes_another_journal_at_once(
    postgres_db_url: str,
) -> None:
    async with journals(postgres_db_url, 2) as (writer, reader):
        woken = anyio.Event()
        reader.on_commit(woken.set)
        await writer.submit(new_task())
        with anyio.fail_after(5):
            await woken.wait()


async def test_a_journal_closed_right_after_a_write_still_wakes_the_others(
    postgres_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # An operator's `tasks cancel` writes once and exits at once: its NOTIFY
    # must go out before the journal closes, not be cut off mid-query (which
    # also made psycopg warn on the operator's terminal).
    async with journals(postgres_db_url, 1) as (reader,):
        woken = anyio.Event()
        reader.on_commit(woken.set)
        async with journals(postgres_db_url, 1) as (writer,):
            await writer.submit(new_task())
        with anyio.fail_after(5):
            await woken.wait()
    assert [
        r.getMessage() for r in caplog.records if r.name.startswith("psycopg")
    ] == []


async def test_notifies_under_load_are_spaced_and_the_last_is_sent_at_close(
    postgres_db_url: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(
        postgres_db_url, autocommit=True
    ) as listening:
        await listening.execute(f"LISTEN {CHANNEL}")
        heard: list[str] = []
        async with PostgresJournal.open(
            postgres_db_url, listen=False, notify_spacing=3600
        ) as writer:
            await writer.submit(new_task())
            # The first commit after a quiet spell is announced at once...
            heard += [
                note.payload
                async for note in listening.notifies(timeout=5, stop_after=1)
            ]
            assert len(heard) == 1
            # ...the next ones wait out the spacing, all under one NOTIFY,
            for _ in range(20):
                await writer.submit(new_task())
        # ...sent when the journal closes, not lost.
        async with await psycopg.AsyncConnection.connect(
            postgres_db_url, autocommit=True
        ) as marker:
            await marker.execute("SELECT pg_notify(%s, 'marker')", (CHANNEL,))
        # Notifications arrive in commit order: the marker comes last.
        async for note in listening.notifies(timeout=5):
            if note.payload == "marker":
                break
            heard.append(note.payload)
    first, last = heard  # two, the second sent at close
    assert first == last


class _Seen:
    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.arrived = anyio.Event()

    def task_changed(self, change: Change) -> None:
        self.changes.append(change)
        self.arrived.set()


async def test_a_replica_that_misses_notifications_still_sees_changes_by_polling(
    postgres_db_url: str,
) -> None:
    async with (
        PostgresJournal.open(postgres_db_url) as writer,
        PostgresJournal.open(postgres_db_url, listen=False) as deaf,
    ):
        notified: list[None] = []
        deaf.on_commit(lambda: notified.append(None))
        feed = Feed(deaf, poll_seconds=0.2)
        seen = _Seen()
        feed.subscribe(seen)
        new = new_task()
        async with anyio.create_task_group() as tg:
            await tg.start(feed.run)
            await writer.submit(new)
            with anyio.fail_after(10):
                await seen.arrived.wait()
            tg.cancel_scope.cancel()
    assert [c.task_id for c in seen.changes] == [new.task_id]
    assert notified == []  # no notification reached it: the poll found the change


async def test_migrations_racing_from_many_connections_apply_once(
    postgres_db_url: str,
) -> None:
    opened: list[str] = []

    async def one() -> None:
        async with open_journal(postgres_db_url) as journal:
            opened.append(await journal.feed_head())

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(one)
    assert len(opened) == 6
    ((version,),) = _sql(
        postgres_db_url, "SELECT value FROM meta WHERE key = 'schema_version'"
    )
    assert version == str(supported_version())


def _tables(url: str) -> list[tuple[object, ...]]:
    return _sql(
        url,
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' ORDER BY table_name",
    )


async def test_a_newer_schema_is_refused_and_left_untouched(
    postgres_db_url: str,
) -> None:
    _sql(
        postgres_db_url, "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)"
    )
    _sql(postgres_db_url, "INSERT INTO meta VALUES ('schema_version', '99')")
    before = _tables(postgres_db_url)
    with pytest.raises(JournalSchemaError, match="schema version 99"):
        async with open_journal(postgres_db_url):
            pass
    assert _tables(postgres_db_url) == before
    assert _sql(postgres_db_url, "SELECT key, value FROM meta") == [
        ("schema_version", "99")
    ]


def test_the_cli_exits_3_on_a_newer_schema_and_names_no_password(
    postgres_db_url: str,
) -> None:
    _sql(
        postgres_db_url, "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)"
    )
    _sql(postgres_db_url, "INSERT INTO meta VALUES ('schema_version', '99')")
    with_password = postgres_db_url.replace("postgres@", "postgres:s3cret-pw@", 1)
    assert with_password != postgres_db_url
    done = subprocess.run(
        [sys.executable, "-m", "mcp_tasks", "serve", "--db", with_password],
        capture_output=True,
        timeout=60,
        check=False,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 3, stderr
    assert "schema version 99" in stderr
    assert "s3cret-pw" not in stderr
    assert "Traceback" not in stderr
    assert _tables(postgres_db_url) == [("meta",)]


def test_without_the_driver_the_cli_says_which_extra_to_install() -> None:
    # Hide psycopg as an installation without the extra would lack it.
    program = (
        "import sys; sys.modules['psycopg'] = None; "
        "from mcp_tasks._cli import main; "
        "sys.exit(main(['serve', '--db', 'postgresql://app@127.0.0.1:1/tasks']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, timeout=60, check=False
    )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert "pip install 'mcp-tasks[postgres]'" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_a_password_never_appears_in_the_location() -> None:
    assert redacted("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert redacted("postgresql://u@h/db?password=pw&sslmode=require") == (
        "postgresql://u@h/db?password=***&sslmode=require"
    )


async def test_an_unreachable_server_is_a_clear_journal_error() -> None:
    with pytest.raises(JournalError, match="cannot open the journal"):
        async with open_journal("postgresql://nobody@127.0.0.1:1/none"):
            pass


async def test_fenced_writes_refuse_a_lease_taken_over_by_another_replica(
    postgres_db_url: str,
) -> None:
    async with journals(postgres_db_url, 2) as (first, second):
        await first.submit(new_task())
        (old,) = await first.claim("h/1", T0 + LEASE, 1, T0)
        (held,) = await second.held_leases(expired_before=T0 + LEASE + 1)
        assert await second.recover(
            held, Recovery.RESUME, "gone", "lease expired", T0 + 31
        )
        (new,) = await second.claim("h/2", T0 + 100, 1, T0 + 31)
        assert new.lease == Lease(old.task_id, "h/2", 2)
        assert (
            await first.finish(old.lease, TaskStatus.COMPLETED, "late", T0 + 32) is None
        )
        assert await complete(second, new, at=T0 + 33) is not None


# ------------------------------------------------------- behind PgBouncer


@pytest.fixture
def pooled_url(postgres_db_url: str) -> Iterator[str]:
    """The test database through PgBouncer in transaction mode (2 server connections)."""
    binary = find_pgbouncer(install=False)
    if binary is None:
        pytest.fail("pgbouncer is missing: apt-get install pgbouncer", pytrace=False)
    parts = urlsplit(postgres_db_url)
    assert parts.port is not None
    dbname = parts.path.lstrip("/")
    with pgbouncer(binary, parts.port, dbname) as port:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"


async def test_through_pgbouncer_in_transaction_mode_claims_caps_and_feed_hold(
    postgres_db_url: str, pooled_url: str
) -> None:
    cap = 2
    owners = [OwnerId(f"client-{n}") for n in range(2)]
    async with AsyncExitStack() as stack:
        opened: list[Journal] = [
            await stack.enter_async_context(
                PostgresJournal.open(
                    pooled_url,
                    pool_size=3,
                    listen_url=postgres_db_url,
                    prepared_statements=False,
                )
            )
            for _ in range(4)
        ]
        woken = anyio.Event()
        opened[3].on_commit(woken.set)
        start = await opened[3].feed_head()
        submitted = [new_task(owners[n % 2], concurrency=cap) for n in range(40)]
        for n, new in enumerate(submitted):
            await opened[n % 3].submit(new)
        with anyio.fail_after(5):
            await woken.wait()  # LISTEN on the direct connection heard them
        claimed: list[str] = []

        async def worker(index: int) -> None:
            journal = opened[index]
            while batch := await journal.claim(f"h/{index}", T0 + LEASE, 2, T0):
                for one in batch:
                    claimed.append(one.task_id)
                    assert await complete(journal, one) is not None

        async with anyio.create_task_group() as tg:
            for index in range(4):
                tg.start_soon(worker, index)
        seen: list[str] = []
        cursor = start
        while (page := await opened[3].changes(cursor, 7)).changes:
            seen += [f"{c.task_id} {c.reason}" for c in page.changes]
            cursor = page.cursor
    assert sorted(claimed) == sorted(new.task_id for new in submitted)
    assert len(seen) == len(set(seen)) == 3 * len(submitted)
    rows = _sql(
        postgres_db_url,
        "SELECT owner_id, reason FROM task_changes "
        "WHERE reason IN ('claimed', 'test') ORDER BY position",
    )
    running: Counter[object] = Counter()
    for owner, reason in rows:
        running[owner] += 1 if reason == "claimed" else -1
        assert 0 <= running[owner] <= cap


async def test_answers_to_one_task_through_two_journals_at_once_resume_it_once(
    postgres_db_url: str,
) -> None:
    async with journals(postgres_db_url, 2) as (first, second):
        asked: list[str] = []
        for _ in range(20):
            claimed = await submit_and_claim(first)
            questions = [InputRequest(k, "elicitation/create", {}) for k in ("a", "b")]
            assert await first.ask(claimed.lease, questions, "two?", T0)
            asked.append(claimed.task_id)
        resumed: list[str] = []

        async def answer(journal: Journal, task_id: str, key: str) -> None:
            accepted, task = await journal.answer(
                TaskId(task_id), {key: {"action": "accept"}}, T0 + 1, by=ACTOR
            )
            assert accepted == [key]
            if task is not None:
                resumed.append(task_id)

        async with anyio.create_task_group() as tg:
            for task_id in asked:
                tg.start_soon(answer, first, task_id, "a")
                tg.start_soon(answer, second, task_id, "b")
        # Each task's last answer resumed it, whichever journal gave it.
        assert sorted(resumed) == sorted(asked)
        for task_id in asked:
            task = await second.get(TaskId(task_id))
            assert task is not None
            assert task.status is TaskStatus.WORKING


async def test_purging_more_than_one_batch_purges_everything_due(
    postgres_db_url: str,
) -> None:
    count = PURGE_BATCH * 2 + 17
    async with journals(postgres_db_url, 1) as (journal,):
        for _ in range(count):
            new = new_task(ttl_seconds=10.0)
            await journal.submit(new)
            cancelled = await journal.cancel(new.task_id, "no", "test", T0, by=ACTOR)
            assert cancelled is not None
        purged = await journal.purge_expired(T0 + 10_000, T0)
        assert len(purged) == len(set(purged)) == count
        assert _sql(postgres_db_url, "SELECT count(*) FROM tasks") == [(0,)]
        assert _sql(postgres_db_url, "SELECT count(*) FROM task_changes") == [(0,)]


async def test_buckets_idle_for_an_hour_are_forgotten_by_the_sweep(
    postgres_db_url: str,
) -> None:
    # Clients' request buckets would otherwise pile up (a session is a client
    # without tokens); one idle for an hour is full, so nothing changes.
    limits = BudgetLimits(requests_per_minute=60, requests_burst=2)
    async with journals(postgres_db_url, 1) as (journal,):
        await journal.take_budget("requests:old", limits, 1, 0, T0)
        await journal.take_budget("requests:new", limits, 1, 0, T0 + 3000)
        await journal.purge_expired(T0 + IDLE_BUCKET_SECONDS + 1, T0)
        assert _sql(postgres_db_url, "SELECT name FROM budgets") == [("requests:new",)]
        # Forgotten, the bucket reads (and gives) as full as before.
        left = await journal.budget_left("requests:old", limits, T0 + 3700)
        assert left == {"requests": 2.0}


def _at_version_1(url: str) -> None:
    """Make the database one that mcp-tasks with schema version 1 created."""
    ((version, script), *_) = migrations(PACKAGE)
    assert version == 1
    with psycopg.connect(url) as conn:  # one transaction, committed on exit
        conn.execute(script)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")


async def test_a_version_1_database_is_upgraded_and_keeps_its_queue(
    postgres_db_url: str,
) -> None:
    _at_version_1(postgres_db_url)
    # Queued by the previous version, with its own `submit_task`.
    older = new_task(created_at=T0 - 60)
    submitted = _sql(
        postgres_db_url,
        queries(PACKAGE)["submit_task"],
        *_rows.new_task_row(older),
        older.concurrency,
        older.backlog,
    )
    assert submitted == [(True,)]
    async with journals(postgres_db_url, 1) as (journal,):
        ((version,),) = _sql(
            postgres_db_url, "SELECT value FROM meta WHERE key = 'schema_version'"
        )
        assert version == str(supported_version()) != "1"
        (claimed,) = await journal.claim("h/1", T0 + LEASE, 1, T0)
        assert (claimed.task_id, claimed.created_at) == (older.task_id, T0 - 60)
        (row,) = await journal.list_tasks()
        assert (row.phase, row.attempts, row.holder) == ("running", 1, "h/1")


def _tasks_scans(plan: Any) -> Iterator[Any]:
    """Every node of a JSON query plan that reads the ``tasks`` table."""
    if plan.get("Relation Name") == "tasks":
        yield plan
    for child in plan.get("Plans", []):
        yield from _tasks_scans(child)


async def test_the_oldest_queued_time_reads_one_queued_task_not_the_queue(
    postgres_db_url: str,
) -> None:
    # Metrics read it at every scrape; a client may have 100,000 tasks queued.
    async with journals(postgres_db_url, 1) as (journal,):
        await journal.submit(new_task(created_at=T0))
    _sql(
        postgres_db_url,
        "INSERT INTO tasks (task_id, owner_id, tool_name, arguments, status, "
        "created_at, updated_at, poll_interval_seconds, phase) "
        "SELECT 'bulk-' || n, 'alice', 'echo', '{}', 'working', %s + n, %s + n, 1, "
        "'queued' FROM generate_series(1, 5000) AS n",
        T0,
        T0,
    )
    _sql(postgres_db_url, "ANALYZE tasks")
    for name, params in (("load_one", ("alice",)), ("load_all", ())):
        ((explained,),) = _sql(
            postgres_db_url,
            "EXPLAIN (ANALYZE, FORMAT JSON) " + queries(PACKAGE)[name],
            *params,
        )
        plan: Any = json.loads(explained) if isinstance(explained, str) else explained
        scans = list(_tasks_scans(plan[0]["Plan"]))
        assert scans, plan
        assert [node["Actual Rows"] for node in scans] == [1] * len(scans), plan


async def test_reseal_leaves_a_row_another_writer_changed_meanwhile(
    postgres_db_url: str, tmp_path: Path
) -> None:
    # SQLite reads a page and updates it in one write transaction (nobody can
    # write in between); on PostgreSQL another transaction can, and the
    # compare-and-set must let its value stand.
    old, both = tmp_path / "old", tmp_path / "both"
    add_key(old)
    both.write_text(old.read_text())
    both.chmod(0o600)
    add_key(both)
    task = new_task(arguments={"a": 1}, status_message="queued")
    async with open_journal(postgres_db_url, sealing=sealing_from(old)) as journal:
        await journal.submit(task)
    with psycopg.connect(postgres_db_url) as blocker:
        # Holds the task row's lock until it commits its own change.
        blocker.execute(
            "UPDATE tasks SET status_message = 'changed meanwhile' WHERE task_id = %s",
            (task.task_id,),
        )
        async with open_journal(postgres_db_url, sealing=sealing_from(both)) as journal:
            done: list[Resealed] = []

            async def reseal() -> None:
                done.append(await journal.reseal())

            async with anyio.create_task_group() as tg:
                tg.start_soon(reseal)
                with anyio.fail_after(30):
                    # A bounded wait for a state of the server: reseal's
                    # UPDATE queued behind the blocker's row lock.
                    while not _sql(postgres_db_url, _WAITING_FOR_A_LOCK)[0][0]:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                blocker.commit()
            ((message, arguments),) = _sql(
                postgres_db_url,
                "SELECT status_message, arguments FROM tasks WHERE task_id = %s",
                task.task_id,
            )
            (result,) = done
            assert result.skipped == 1  # the task row, left as the other writer made it
            assert message == "changed meanwhile"
            assert str(arguments).startswith("mtk1:k1:")  # untouched, not re-sealed
            assert result.values == 1  # its change row (status message), re-sealed
            assert result.forgotten == ()  # k1 still holds its arguments


_WAITING_FOR_A_LOCK = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
"""
