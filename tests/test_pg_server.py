"""The PostgreSQL the suite runs against: the fixtures, the cluster, the CLI."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import tempfile
from collections.abc import Generator
from pathlib import Path

import psycopg
import pytest

from benchmarks import pg_cluster
from benchmarks.pg_cluster import (
    INSTALL_HINT,
    PgCluster,
    PostgresUnavailableError,
    running_cluster,
    with_database,
)

from .pg_server import fresh_database, postgres_server


def _scalar(url: str, query: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(query.encode()).fetchone()
        assert row is not None
        return row[0]


def _databases(server_url: str) -> set[str]:
    with psycopg.connect(server_url) as conn:
        rows = conn.execute("SELECT datname FROM pg_database").fetchall()
    return {str(name) for (name,) in rows}


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def base_dir() -> Generator[Path]:
    """A folder for clusters that the server's user can reach (tmp_path is private)."""
    base = Path(tempfile.mkdtemp(prefix="mcp-tasks-pg-test-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- fixtures


def test_postgres_db_url_is_a_working_empty_database(postgres_db_url: str) -> None:
    assert _scalar(postgres_db_url, "SELECT 1") == 1
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert _scalar(postgres_db_url, tables) == 0
    assert str(_scalar(postgres_db_url, "SELECT current_database()")).startswith(
        "test_"
    )


def test_databases_are_isolated_and_dropped(postgres_url: str) -> None:
    with fresh_database(postgres_url) as first, fresh_database(postgres_url) as second:
        assert first != second
        with psycopg.connect(first, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")
        exists = "SELECT to_regclass('public.t') IS NOT NULL"
        assert _scalar(first, exists) is True
        assert _scalar(second, exists) is False
        names = {first.rsplit("/", 1)[1], second.rsplit("/", 1)[1]}
        assert names <= _databases(postgres_url)

    assert not names & _databases(postgres_url)


def test_a_database_is_dropped_even_with_a_session_left_open(postgres_url: str) -> None:
    with fresh_database(postgres_url) as url:
        left_open = psycopg.connect(url)
        name = url.rsplit("/", 1)[1]
    try:
        assert name not in _databases(postgres_url)
        with pytest.raises(psycopg.OperationalError):
            left_open.execute("SELECT 1")
    finally:
        left_open.close()


def test_the_server_in_the_environment_variable_is_used_as_given() -> None:
    url = "postgresql://someone@db.invalid:6543/anything?sslmode=disable"
    with postgres_server({"MCP_TASKS_TEST_POSTGRES_URL": url}) as got:
        assert got == url


def test_a_malformed_server_variable_is_refused_with_the_url_named() -> None:
    environ = {"MCP_TASKS_TEST_POSTGRES_URL": "host=localhost dbname=x"}
    with (
        pytest.raises(ValueError, match=r"not a PostgreSQL URL.*host=localhost"),
        postgres_server(environ),
    ):
        pass


# ----------------------------------------------------------------- cluster


def test_cluster_keeps_durability_defaults_and_is_removed_after(base_dir: Path) -> None:
    with running_cluster(base_dir=base_dir) as cluster:
        url = cluster.url()
        root, port = cluster.root, cluster.port
        assert port is not None
        with psycopg.connect(url) as conn:
            settings = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN ("
                    "'fsync', 'synchronous_commit', 'full_page_writes', "
                    "'max_connections', 'listen_addresses', 'unix_socket_directories')"
                ).fetchall()
            )
        assert settings == {
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "max_connections": "200",
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(cluster.socket_dir),
        }
        # PostgreSQL refuses root: as root the files belong to `postgres`.
        owner = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
        assert cluster.data.stat().st_uid == owner
        assert root.parent == base_dir

    assert not root.exists()
    assert not _accepts(port)


def test_cluster_that_cannot_start_says_why_and_leaves_nothing(base_dir: Path) -> None:
    with (
        pytest.raises(PostgresUnavailableError, match="max_connections") as caught,
        running_cluster(base_dir=base_dir, max_connections=-1),
    ):
        pass

    assert "\n" not in str(caught.value)
    assert list(base_dir.iterdir()) == []


def test_missing_binaries_fail_with_one_line_naming_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pg_cluster, "DEBIAN_BINDIRS", tmp_path / "none")
    with pytest.raises(PostgresUnavailableError) as caught:
        pg_cluster.ensure_bindir(install=False)

    message = str(caught.value)
    assert message == INSTALL_HINT
    assert "\n" not in message
    assert "apt-get install postgresql" in message
    assert "MCP_TASKS_TEST_POSTGRES_URL" in message


def test_binaries_are_found_on_path_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("initdb", "pg_ctl"):
        program = tmp_path / name
        program.write_text("#!/bin/sh\n", encoding="utf-8")
        program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert pg_cluster.find_bindir() == tmp_path


def test_stopping_twice_is_harmless(base_dir: Path) -> None:
    cluster = PgCluster.create(base_dir=base_dir)
    try:
        cluster.start()
        cluster.stop()
        cluster.stop()
        with pytest.raises(RuntimeError, match="not running"):
            cluster.url()
    finally:
        cluster.remove()
    assert not cluster.root.exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h:5/db", "postgresql://u@h:5/other"),
        (
            "postgres://u:p@h/db?sslmode=require",
            "postgres://u:p@h/other?sslmode=require",
        ),
        ("postgresql://u@h:5", "postgresql://u@h:5/other"),
        ("postgresql://u@h:5/", "postgresql://u@h:5/other"),
    ],
)
def test_with_database_replaces_only_the_database(url: str, expected: str) -> None:
    assert with_database(url, "other") == expected


# --------------------------------------------------------------------- CLI


def test_cli_starts_reports_and_stops_one_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "cluster.json"
    assert pg_cluster.main(["start"], state=state) == 0
    url = capsys.readouterr().out.strip()
    try:
        assert _scalar(url, "SELECT 1") == 1
        assert pg_cluster.main(["start"], state=state) == 0  # the same one again
        assert pg_cluster.main(["url"], state=state) == 0
        assert capsys.readouterr().out.split() == [url, url]
        root = Path(str(_scalar(url, "SHOW data_directory"))).parent
    finally:
        assert pg_cluster.main(["stop"], state=state) == 0

    assert not root.exists()
    assert not state.exists()
    assert pg_cluster.main(["url"], state=state) == 1
    assert "scripts/postgres start" in capsys.readouterr().err
    assert pg_cluster.main(["restart"], state=state) == 2
