"""Contract: encryption at rest (`Sealing`), on every backend.

A marker string goes into every sealable place (arguments, request metadata,
a step result, a question, an answer, a tool error result and its text); with
a keyring it must appear nowhere in storage (SQLite: the bytes of the
database, its WAL and its shared-memory file, read while the journal is open,
before any checkpoint; PostgreSQL: every row of every table as text), while
the journal still returns it. Without a keyring the same check finds it,
which shows the check can fail.
"""

from __future__ import annotations

import base64
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from mcp_tasks._exceptions import ConfigurationError, JournalError
from mcp_tasks._model import InputRequest, Outcome, TaskId, TaskStatus
from mcp_tasks.journal import NO_SEALING, Journal, Keyring, Report, Sealing
from tests.journal.conftest import Backend

from .support import ACTOR, HOLDER, LEASE, T0, new_task, submit_and_claim

MARKER = "zq-marker-5c1e-9f0a"


def keyring(path: Path, *keys: tuple[str, bytes]) -> Sealing:
    lines = [f"{key_id} {base64.b64encode(key).decode()}" for key_id, key in keys]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return Sealing(Keyring.load(path))


K1 = ("k1", bytes(range(32)))
K2 = ("k2", bytes(range(32, 64)))
WRONG_K1 = ("k1", bytes(range(64, 96)))


async def fill(journal: Journal) -> TaskId:
    """One task with the marker in every sealable place, ended as a tool error."""
    new = new_task(arguments={"secret": MARKER}, request_meta={"note": MARKER})
    claimed = await submit_and_claim(journal, new)
    assert claimed.arguments == {"secret": MARKER}
    assert claimed.request_meta == {"note": MARKER}
    assert await journal.record_step(claimed.lease, "s", {"got": MARKER}, T0 + 1)
    assert await journal.log(claimed.lease, "info", f"log {MARKER}", T0 + 1)
    report = Report(message=f"working on {MARKER}", progress=1.0, total=2.0)
    assert await journal.report(claimed.lease, T0 + 1, [report])
    asked = await journal.ask(
        claimed.lease,
        [InputRequest("q", "elicitation/create", {"message": MARKER})],
        f"asks {MARKER}",
        T0 + 1,
    )
    assert asked is not None
    answer = {"action": "accept", "content": {"said": MARKER}}
    accepted, resumed = await journal.answer(
        new.task_id, {"q": answer}, T0 + 2, by=ACTOR
    )
    assert accepted == ["q"]
    assert resumed is not None
    (again,) = await journal.claim(HOLDER, T0 + 2 + LEASE, 1, T0 + 2)
    assert again.arguments == {"secret": MARKER}
    error = {"content": [{"type": "text", "text": MARKER}], "isError": True}
    finished = await journal.finish(
        again.lease,
        TaskStatus.COMPLETED,
        "done",
        T0 + 3,
        message=f"ended {MARKER}",
        outcome=Outcome(result=error),
    )
    assert finished is not None
    assert finished.tool_error == MARKER
    return new.task_id


async def assert_readable(journal: Journal, task_id: TaskId) -> None:
    """The journal returns every value in plaintext."""
    task = await journal.get(task_id, outcome=True)
    assert task is not None
    assert task.outcome is not None
    assert task.outcome.result == {
        "content": [{"type": "text", "text": MARKER}],
        "isError": True,
    }
    assert task.tool_error == MARKER
    assert task.status_message == f"ended {MARKER}"
    events = await journal.events(task_id)
    messages = [e.status_message for e in events]
    assert f"asks {MARKER}" in messages
    assert f"working on {MARKER}" in messages
    assert {"level": "info", "message": f"log {MARKER}"} in [e.data for e in events]
    assert await journal.request_meta(task_id) == {"note": MARKER}
    assert await journal.steps(task_id) == {"s": {"got": MARKER}}
    (question,) = await journal.input_requests(task_id)
    assert question.params == {"message": MARKER}
    assert question.response == {"action": "accept", "content": {"said": MARKER}}
    (row,) = [r for r in await journal.list_tasks() if r.task.task_id == task_id]
    assert row.task.tool_error == MARKER


def stored(backend: Backend, location: str) -> bytes:
    """Everything the backend has stored, as bytes (read while the journal is open)."""
    if backend.name == "sqlite":
        found = b""
        for suffix in ("", "-wal", "-shm"):
            path = Path(location + suffix)
            if path.exists():
                found += path.read_bytes()
        assert Path(location + "-wal").stat().st_size > 0  # not checkpointed away
        return found
    with psycopg.connect(location, autocommit=True) as conn:
        tables = [
            str(r[0])
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            ).fetchall()
        ]
        assert {"tasks", "steps", "input_requests", "sealing_keys"} <= set(tables)
        text = ""
        for table in tables:
            query = sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(table))
            text += "\n".join(str(r[0]) for r in conn.execute(query).fetchall())
        return text.encode()


async def test_with_a_key_no_sealable_value_is_stored_in_plaintext(
    backend: Backend, database: str, tmp_path: Path
) -> None:
    sealing = keyring(tmp_path / "keys", K1)
    async with backend.open(database, sealing) as journal:
        task_id = await fill(journal)
        await assert_readable(journal, task_id)
        raw = stored(backend, database)
        assert MARKER.encode() not in raw
        assert b"mtk1:k1:" in raw
    async with backend.open(database, sealing) as journal:  # as another process
        await assert_readable(journal, task_id)


async def test_without_a_key_the_same_values_are_stored_in_plaintext(
    backend: Backend, database: str
) -> None:
    async with backend.open(database) as journal:
        task_id = await fill(journal)
        await assert_readable(journal, task_id)
        assert MARKER.encode() in stored(backend, database)


async def test_two_journals_on_one_database_read_each_others_sealed_values(
    backend: Backend, database: str, tmp_path: Path
) -> None:
    sealing = keyring(tmp_path / "keys", K1)
    async with (
        backend.open(database, sealing) as journal,
        backend.open(database, sealing) as other,
    ):
        task_id = await fill(journal)
        await assert_readable(other, task_id)


async def test_new_values_use_the_newest_key_and_rekey_moves_old_ones_to_it(
    backend: Backend, database: str, tmp_path: Path
) -> None:
    async with backend.open(database, keyring(tmp_path / "old", K1)) as journal:
        first = await fill(journal)
    both = keyring(tmp_path / "both", K1, K2)
    async with backend.open(database, both) as journal:
        await assert_readable(journal, first)  # older rows stay readable
        new = new_task(arguments={"secret": MARKER})
        await journal.submit(new)
        raw = stored(backend, database)
        assert b"mtk1:k1:" in raw
        assert b"mtk1:k2:" in raw
        old = [
            v for v in live_values(backend, database) if not v.startswith("mtk1:k2:")
        ]
        # The first task's (and on PostgreSQL the claims' holder data, which
        # its claim function writes in SQL, in plaintext: not sealable).
        assert any(v.startswith("mtk1:k1:") for v in old)
        done = await journal.reseal(batch=1)  # a page per row: pages chain
        assert (done.values, done.skipped, done.forgotten) == (len(old), 0, ("k1",))
        assert all(v.startswith("mtk1:k2:") for v in live_values(backend, database))
        again = await journal.reseal()
        assert (again.values, again.forgotten) == (0, ())
    # The old key may now leave the file.
    async with backend.open(database, keyring(tmp_path / "new", K2)) as journal:
        await assert_readable(journal, first)
        (claimed,) = await journal.claim(HOLDER, T0 + LEASE, 1, T0)
        assert claimed.arguments == {"secret": MARKER}


async def test_a_plaintext_journal_gets_a_key_and_rekey_seals_what_it_held(
    backend: Backend, database: str, tmp_path: Path
) -> None:
    async with backend.open(database) as journal:
        task_id = await fill(journal)
    sealing = keyring(tmp_path / "keys", K1)
    async with backend.open(database, sealing) as journal:
        await assert_readable(journal, task_id)
        plain = [v for v in live_values(backend, database) if not v.startswith("mtk1:")]
        assert len(plain) > 10
        done = await journal.reseal()
        assert (done.values, done.forgotten) == (len(plain), ())
        await assert_readable(journal, task_id)
        assert all(v.startswith("mtk1:k1:") for v in live_values(backend, database))


async def test_reseal_needs_a_keyring(backend: Backend, database: str) -> None:
    async with backend.open(database) as journal:
        with pytest.raises(ConfigurationError, match="key file"):
            await journal.reseal()


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ((), "no key file is configured"),
        ((WRONG_K1,), "wrong key"),
        ((K2,), "key 'k1', which is not in"),
    ],
)
async def test_a_key_that_cannot_open_the_journal_is_refused_at_open(
    backend: Backend,
    database: str,
    tmp_path: Path,
    keys: tuple[tuple[str, bytes], ...],
    problem: str,
) -> None:
    async with backend.open(database, keyring(tmp_path / "right", K1)) as journal:
        await fill(journal)
    sealing = keyring(tmp_path / "given", *keys) if keys else NO_SEALING
    with pytest.raises(ConfigurationError, match=problem) as caught:
        async with backend.open(database, sealing):
            pass
    assert caught.value.key == "journal.encryption_key_file"


async def test_a_sealed_value_moved_to_another_row_does_not_open(
    backend: Backend, database: str, tmp_path: Path
) -> None:
    sealing = keyring(tmp_path / "keys", K1)
    async with backend.open(database, sealing) as journal:
        one = new_task(arguments={"secret": MARKER})
        two = new_task(arguments={"plain": 1})
        await journal.submit(one)
        await journal.submit(two)
        swap(backend, database, one.task_id, two.task_id)
        with pytest.raises(JournalError, match="does not open"):
            await journal.claim(HOLDER, T0 + LEASE, 2, T0)


_LIVE = """
SELECT v FROM (
    SELECT arguments AS v FROM tasks UNION ALL SELECT request_meta FROM tasks
    UNION ALL SELECT outcome FROM tasks UNION ALL SELECT tool_error FROM tasks
    UNION ALL SELECT status_message FROM tasks
    UNION ALL SELECT status_message FROM task_changes
    UNION ALL SELECT data FROM task_changes
    UNION ALL SELECT result FROM steps UNION ALL SELECT params FROM input_requests
    UNION ALL SELECT response FROM input_requests
) AS stored WHERE v IS NOT NULL
"""


def live_values(backend: Backend, database: str) -> list[str]:
    """Every sealable value the tables hold now, as stored."""
    if backend.name == "sqlite":
        import sqlite3

        with sqlite3.connect(database) as db:
            return [str(r[0]) for r in db.execute(_LIVE).fetchall()]
    with psycopg.connect(database, autocommit=True) as conn:
        return [str(r[0]) for r in conn.execute(_LIVE).fetchall()]


def swap(backend: Backend, database: str, source: str, target: str) -> None:
    """Copy ``source``'s stored arguments over ``target``'s, behind the journal's back."""
    if backend.name == "sqlite":
        import sqlite3

        with sqlite3.connect(database) as db:
            db.execute(
                "UPDATE tasks SET arguments = "
                "(SELECT arguments FROM tasks WHERE task_id = ?) WHERE task_id = ?",
                (source, target),
            )
        return
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "UPDATE tasks SET arguments = "
            "(SELECT arguments FROM tasks WHERE task_id = %s) WHERE task_id = %s",
            (source, target),
        )


async def test_a_large_result_is_sealed_and_opened_whole(
    backend: Backend, database: str, tmp_path: Path
) -> None:
    # Over a megabyte: sealed and opened on worker threads, not the loop.
    big = MARKER + "y" * (1 << 21)
    async with backend.open(database, keyring(tmp_path / "keys", K1)) as journal:
        claimed = await submit_and_claim(journal)
        result = {"content": [{"type": "text", "text": big}]}
        await journal.finish(
            claimed.lease, TaskStatus.COMPLETED, "done", T0 + 1, outcome=Outcome(result)
        )
        task = await journal.get(claimed.task_id, outcome=True)
        assert task is not None
        assert task.outcome == Outcome(result)
        assert MARKER.encode() not in stored(backend, database)
