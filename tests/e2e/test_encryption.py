"""Encryption at rest, end to end: real servers, a real key file, real journals.

Two ``mcp-tasks serve --http`` processes share one journal (a SQLite file, or a
PostgreSQL database) with ``[journal] encryption_key_file`` set: a question
asked through one, whose arguments, question, answer and result carry a
marker, is answered and fetched through the other, and the marker is nowhere
in storage (the SQLite file, its WAL and shared-memory file read while the
servers run; every PostgreSQL row as text). ``mcp-tasks journal keygen`` makes
the keys and ``journal rekey`` moves the journal to a new one, after which the
old key leaves the file and a server still reads everything. A missing or
wrong key file, or none for an encrypted journal, is one line and exit 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import psycopg
import pytest
from psycopg import sql

from .support import TIMEOUT, obj
from .test_many_processes import (
    ELICIT,
    MODERN,
    Journal,
    Replica,
    client,
    create,
    make_journal,
    poll_until,
    result_text,
)
from .test_startup import assert_one_line, run

pytestmark = pytest.mark.timeout(180)

MARKER = "e2e-marker-7d41c0"
CLI = [sys.executable, "-m", "mcp_tasks"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def keygen(path: Path) -> str:
    done = cli("journal", "keygen", "--key-file", str(path))
    assert done.returncode == 0, done.stderr
    return done.stdout


def with_key_file(journal: Journal, key_file: Path, db: str | None = None) -> None:
    """Name the key file (and the database, if given) in the servers' config."""
    config = journal.root / "config.toml"
    extra = f'encryption_key_file = "{key_file}"\n'
    if db is not None:
        extra += f'db = "{db}"\n'
    config.write_text(config.read_text().replace("[journal]\n", f"[journal]\n{extra}"))


def replica(journal: Journal, name: str, db: str | None) -> Replica:
    made = journal.replica(name)
    if db is not None:  # PostgreSQL: from the config, not the file --db names
        at = made.argv.index("--db")
        del made.argv[at : at + 2]
    return made


@pytest.fixture
def sqlite_journal(tmp_path: Path, events_path: Path) -> Iterator[Journal]:
    journal = make_journal(tmp_path / "sealed", events_path)
    try:
        yield journal
    finally:
        journal.stop_all()


async def answer_a_marked_question(a: Replica, b: Replica) -> str:
    """Ask through ``a``, answer and read the result through ``b``; the task id."""
    async with (
        client(a, MODERN, capabilities=ELICIT) as on_a,
        client(b, MODERN, capabilities=ELICIT) as on_b,
    ):
        task_id = await create(on_a, "ask", {"question": f"Say {MARKER}?"})
        waiting = await poll_until(on_b, task_id, {"input_required"})
        ((key, question),) = obj(waiting["inputRequests"]).items()
        assert MARKER in json.dumps(question)
        answer = {"action": "accept", "content": {"answer": f"said {MARKER}"}}
        await on_b.update_task(task_id, {key: answer})
        done = await poll_until(on_b, task_id, {"completed"})
        assert result_text(on_b, done) == f"said {MARKER}"
    return task_id


async def result_through(server: Replica, task_id: str) -> str:
    async with client(server, MODERN, capabilities=ELICIT) as opened:
        with anyio.fail_after(TIMEOUT):
            done = await poll_until(opened, task_id, {"completed"})
        return result_text(opened, done)


def sqlite_bytes(db: Path) -> bytes:
    """The database file, its WAL (which must hold frames) and shared-memory file."""
    assert Path(f"{db}-wal").stat().st_size > 0
    found = b""
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            found += path.read_bytes()
    return found


def postgres_text(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            str(r[0])
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            ).fetchall()
        ]
        assert "sealing_keys" in tables
        rows: list[str] = []
        for table in tables:
            query = sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(table))
            rows += [str(r[0]) for r in conn.execute(query).fetchall()]
        return "\n".join(rows)


async def test_two_processes_share_an_encrypted_sqlite_journal_and_rekey_it(
    sqlite_journal: Journal, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    assert "added key k1" in keygen(keys)
    with_key_file(sqlite_journal, keys)
    a = replica(sqlite_journal, "A", None)
    b = replica(sqlite_journal, "B", None)
    await anyio.to_thread.run_sync(a.start)
    await anyio.to_thread.run_sync(b.start)
    task_id = await answer_a_marked_question(a, b)
    db = sqlite_journal.db
    raw = sqlite_bytes(db)
    assert MARKER.encode() not in raw
    assert b"mtk1:k1:" in raw
    # The operator command reads it with the same config.
    config = str(sqlite_journal.root / "config.toml")
    shown = cli("tasks", "show", task_id, "--db", str(db), "--config", config, "--json")
    assert shown.returncode == 0, shown.stderr
    assert MARKER in shown.stdout
    # Rotation as the README orders it: a new key, every server restarted with
    # it, a rekey while one serves, then the old key leaves the file.
    assert "added key k2" in keygen(keys)
    sqlite_journal.stop_all()
    c = replica(sqlite_journal, "C", None)
    await anyio.to_thread.run_sync(c.start)
    rekeyed = cli("journal", "rekey", "--db", str(db), "--key-file", str(keys))
    assert rekeyed.returncode == 0, rekeyed.stderr
    assert "with key k2" in rekeyed.stdout
    assert "no value uses key k1 any more" in rekeyed.stdout
    assert await result_through(c, task_id) == f"said {MARKER}"
    sqlite_journal.stop_all()
    keys.write_text("".join(line + "\n" for line in keys.read_text().splitlines()[1:]))
    d = replica(sqlite_journal, "D", None)
    await anyio.to_thread.run_sync(d.start)
    assert await result_through(d, task_id) == f"said {MARKER}"
    assert MARKER.encode() not in sqlite_bytes(db)


async def test_two_processes_share_an_encrypted_postgres_journal(
    tmp_path: Path, events_path: Path, postgres_db_url: str
) -> None:
    journal = make_journal(tmp_path / "pg", events_path)
    try:
        keys = tmp_path / "keys"
        keygen(keys)
        with_key_file(journal, keys, db=postgres_db_url)
        a = replica(journal, "A", postgres_db_url)
        b = replica(journal, "B", postgres_db_url)
        await anyio.to_thread.run_sync(a.start)
        await anyio.to_thread.run_sync(b.start)
        assert "journal postgresql://" in b.log_text()
        task_id = await answer_a_marked_question(a, b)
        stored = postgres_text(postgres_db_url)
        assert task_id in stored  # the check reads the task's rows...
        assert MARKER not in stored  # ...and finds no plaintext in them
        assert "mtk1:k1:" in stored
    finally:
        journal.stop_all()


def serve(db: Path, config: Path | None) -> list[str]:
    argv = [*CLI, "serve", "--db", str(db)]
    return argv if config is None else [*argv, "--config", str(config)]


def config_with_key(path: Path, key_file: Path) -> Path:
    path.write_text(f'[journal]\nencryption_key_file = "{key_file}"\n')
    return path


def test_a_missing_or_wrong_key_is_refused_with_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    keygen(keys)
    db = tmp_path / "tasks.db"
    right = config_with_key(tmp_path / "right.toml", keys)
    code, stderr = run(serve(db, right), tmp_path)  # stdin closed: starts, exits 0
    assert code == 0, stderr
    assert db.exists()

    missing = config_with_key(tmp_path / "missing.toml", tmp_path / "no-such-keys")
    code, stderr = run(serve(db, missing), tmp_path)
    assert code == 2, stderr
    assert "no key file there" in assert_one_line(stderr)

    other = tmp_path / "other-keys"
    keygen(other)  # also "k1", another key
    wrong = config_with_key(tmp_path / "wrong.toml", other)
    code, stderr = run(serve(db, wrong), tmp_path)
    assert code == 2, stderr
    assert "wrong key" in assert_one_line(stderr)

    code, stderr = run(serve(db, None), tmp_path)
    assert code == 2, stderr
    line = assert_one_line(stderr)
    assert "holds encrypted values" in line
    assert "encryption_key_file" in line

    malformed = tmp_path / "malformed-keys"
    malformed.write_text("k1 not-base64!\n")
    bad = config_with_key(tmp_path / "bad.toml", malformed)
    code, stderr = run(serve(db, bad), tmp_path)
    assert code == 2, stderr
    assert "line 1" in assert_one_line(stderr)


def test_rekey_refuses_a_wrong_or_missing_key_with_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    keygen(keys)
    db = tmp_path / "tasks.db"
    code, stderr = run(serve(db, config_with_key(tmp_path / "c.toml", keys)), tmp_path)
    assert code == 0, stderr
    other = tmp_path / "other-keys"
    keygen(other)
    wrong = cli("journal", "rekey", "--db", str(db), "--key-file", str(other))
    assert wrong.returncode == 2, wrong.stderr
    assert "wrong key" in assert_one_line(wrong.stderr)
    none = cli("journal", "rekey", "--db", str(db))
    assert none.returncode == 2, none.stderr
    assert "needs --key-file" in assert_one_line(none.stderr)
    absent = cli(
        "journal", "rekey", "--db", str(tmp_path / "no.db"), "--key-file", str(keys)
    )
    assert absent.returncode == 3, absent.stderr
    assert "no journal there" in assert_one_line(absent.stderr)
    done = cli("journal", "rekey", "--db", str(db), "--key-file", str(keys))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("re-encrypted ")
