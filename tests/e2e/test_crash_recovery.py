"""Durable execution end to end: ``kill -9`` the real server and restart it.

Each test runs ``mcp-tasks serve --http`` as a subprocess on its own journal,
submits tasks of the tools in ``crash_tools.py``, kills the server with SIGKILL
at a chosen point (submits in flight, mid-step, between steps, during a retry
backoff), restarts it on the same ``--db`` and checks that:

- every task whose handle was returned exists after the restart;
- every task reaches a terminal state (resuming where it should);
- no recorded step body ran again (the tools log each body execution to a
  side file; an interrupted body may run once more: at-least-once execution,
  exactly-once recording), and finished tasks never ran again;
- results equal those of a crash-free run of the same inputs (`reference`).

Tools hold at gates (blocked on a Unix socket until the test opens them, after
telling it they got there), so each kill lands exactly where intended.
Start-up errors (corrupt, unusable, newer or locked journal) are checked last.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_tasks.client import RpcError
from mcp_tasks.journal.sqlite import SqliteJournal

from .crash_support import (
    DEADLINE,
    EXIT_JOURNAL,
    JournalSnapshot,
    SideLog,
    Workspace,
    check_exactly_once_recording,
    list_all,
    outcome,
    outcomes,
    run_cli,
    serving,
    snapshot_journal,
    submit,
    user_version,
)

# Every input any test submits, by its ``key``; `reference` runs them all once.
FLOOD = [f"flood-{i:02d}" for i in range(60)]
INPUTS: dict[str, tuple[str, dict[str, Any]]] = {
    **{
        key: ("crash_short", {"key": key, "n": i})
        if i % 3
        else ("crash_stepped", {"key": key, "steps": 2})
        for i, key in enumerate(FLOOD)
    },
    "mid": ("crash_stepped", {"key": "mid", "steps": 3, "hold": ["in-s1"]}),
    "between": ("crash_stepped", {"key": "between", "steps": 3, "hold": ["before-s2"]}),
    "retry": ("crash_retry", {"key": "retry"}),
    "fail": ("crash_fail", {"key": "fail", "hold": ["in-work"]}),
    "restart": ("crash_restart", {"key": "restart", "steps": 3, "hold": ["before-s2"]}),
    "mix-long": ("crash_long", {"key": "mix-long", "steps": 30, "pause": 0.02}),
    "mix-twice": ("crash_stepped", {"key": "mix-twice", "hold": ["in-s0", "in-s2"]}),
    "mix-between": ("crash_stepped", {"key": "mix-between", "hold": ["before-s1"]}),
    "mix-restart": ("crash_restart", {"key": "mix-restart", "hold": ["in-s1"]}),
    "mix-retry": ("crash_retry", {"key": "mix-retry"}),
    "mix-fail": ("crash_fail", {"key": "mix-fail"}),
    **{
        f"mix-short-{i}": ("crash_short", {"key": f"mix-short-{i}", "n": i})
        for i in range(5)
    },
}
MIX = [key for key in INPUTS if key.startswith("mix-")]
#: The flood test kills the server once this many submits have been answered.
KILL_AFTER = 15


async def _crash_free_run(workspace: Workspace) -> dict[str, Any]:
    for key, (_, arguments) in INPUTS.items():
        for point in arguments.get("hold", []):
            workspace.open_gate(key, point)
    async with serving(workspace, label="reference") as server:
        async with server.client() as client:
            ids = {
                key: await submit(client, tool, args)
                for key, (tool, args) in INPUTS.items()
            }
            results = await outcomes(client, ids)
    log = workspace.side_log()
    starts = log.step_starts()
    assert starts, "the tools logged nothing"
    assert set(starts.values()) == {1}, f"a crash-free run repeated steps: {starts}"
    return results


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The results of all `INPUTS` from one server that is never killed."""
    workspace = Workspace(tmp_path_factory.mktemp("reference"))
    results: dict[str, Any] = anyio.run(_crash_free_run, workspace, backend="asyncio")
    return results


def _snapshot(workspace: Workspace, label: str) -> JournalSnapshot:
    return snapshot_journal(workspace.db, workspace.root / f"snapshot-{label}")


# ------------------------------------------------------------------ kills


async def test_handles_returned_before_a_kill_all_survive(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    workspace = Workspace(tmp_path)
    returned: dict[str, str] = {}
    refused: list[RpcError] = []
    async with serving(workspace) as first:
        async with first.doomed_client() as client:

            async def one(key: str) -> None:
                tool, arguments = INPUTS[key]
                try:
                    returned[key] = await submit(client, tool, arguments)
                except RpcError as exc:
                    refused.append(exc)
                if len(returned) >= KILL_AFTER and first.alive():
                    first.kill()  # the other submits are still in flight

            with anyio.fail_after(DEADLINE):
                async with anyio.create_task_group() as tg:
                    for key in FLOOD:
                        tg.start_soon(one, key)
    snapshot = _snapshot(workspace, "first")
    assert KILL_AFTER <= len(returned) < len(FLOOD)
    assert len(refused) <= len(FLOOD) - len(returned)
    lost = {key for key, task_id in returned.items() if task_id not in snapshot.tasks}
    assert not lost, f"handles were returned for tasks the journal lacks: {lost}"

    async with serving(workspace) as second, second.client() as client:
        for task_id in returned.values():
            task = await client.get_task(task_id)  # exists after the restart
            assert task["taskId"] == task_id
        listed = {task["taskId"] for task in await list_all(client)}
        assert listed == set(snapshot.tasks)
        results = await outcomes(client, {task_id: task_id for task_id in listed})

    key_of = {tid: row.arguments["key"] for tid, row in snapshot.tasks.items()}
    assert {tid: results[tid] for tid in listed} == {
        tid: reference[key_of[tid]] for tid in listed
    }
    log = workspace.side_log()
    check_exactly_once_recording(log, [(first.pid, snapshot), (second.pid, None)])
    for task_id in listed:
        key = key_of[task_id]
        assert log.count(key, "s0", "end") >= 1
        assert log.count(key, "s0", "start") <= 2


POINTS = ["mid", "between", "fail", "restart", "retry"]
#: Submitted after "retry" where every worker is taken (see `_kill_at_points`).
PROBE = ("crash_short", {"key": "probe", "n": 0})
#: Long enough that the kill lands inside the retry backoff, short enough to wait out.
RETRY_AFTER = 2.5


@dataclass(frozen=True)
class PointsRun:
    """One server killed with tasks held at several points, then restarted."""

    ids: dict[str, str]
    first_pid: int
    second_pid: int
    snapshot: JournalSnapshot
    log_at_kill: SideLog
    log: SideLog
    after_restart: dict[str, dict[str, Any]]
    results: dict[str, Any]


async def _kill_at_points(workspace: Workspace) -> PointsRun:
    async with serving(workspace, label="first") as first:
        async with first.client() as client:
            ids = {key: await submit(client, *INPUTS[key]) for key in POINTS[:-1]}
            await first.reached("mid", "in-s1")  # mid-step
            await first.reached("between", "before-s2")  # between steps
            await first.reached("fail", "in-work")
            await first.reached("restart", "before-s2")
            # Last, so the kill follows its park closely, well within the backoff.
            ids["retry"] = await submit(client, *INPUTS["retry"])
            # The four held tasks and "retry" take every worker, and a worker
            # is freed only after its run ended: for "retry", once its park
            # (the retry backoff) is committed. So the probe's result says so.
            await outcome(client, await submit(client, *PROBE))
        first.kill()
    snapshot = _snapshot(workspace, "first")
    log_at_kill = workspace.side_log()

    # Open every gate; for "fail" that would let a (wrong) re-run finish.
    for key in POINTS:
        for point in INPUTS[key][1].get("hold", []):
            workspace.open_gate(key, point)
    async with serving(workspace, label="second") as second, second.client() as client:
        after_restart = {key: await client.get_task(ids[key]) for key in POINTS}
        results = await outcomes(client, ids)
    return PointsRun(
        ids,
        first.pid,
        second.pid,
        snapshot,
        log_at_kill,
        workspace.side_log(),
        after_restart,
        results,
    )


@pytest.fixture(scope="module")
def points(tmp_path_factory: pytest.TempPathFactory) -> PointsRun:
    """The run of `_kill_at_points`, shared by the tests that examine it."""
    workspace = Workspace(
        tmp_path_factory.mktemp("points"),
        retry_after=RETRY_AFTER,
        workers=len(POINTS),
    )
    run: PointsRun = anyio.run(_kill_at_points, workspace, backend="asyncio")
    return run


def test_points_every_task_finishes_as_without_a_crash(
    points: PointsRun, reference: dict[str, Any]
) -> None:
    expected = {key: reference[key] for key in POINTS if key != "fail"}
    assert {key: points.results[key] for key in expected} == expected
    check_exactly_once_recording(
        points.log,
        [(points.first_pid, points.snapshot), (points.second_pid, None)],
        forgetful=frozenset({points.ids["restart"]}),
    )


def test_kill_mid_step_reruns_only_the_interrupted_step(points: PointsRun) -> None:
    task_id, log = points.ids["mid"], points.log
    assert points.snapshot.tasks[task_id].phase == "running"
    assert points.snapshot.has_step(task_id, "s0")
    assert not points.snapshot.has_step(task_id, "s1")
    assert log.count("mid", "s0", "start") == 1
    assert log.count("mid", "s1", "start", pid=points.first_pid) == 1
    assert log.count("mid", "s1", "start", pid=points.second_pid) == 1
    assert log.count("mid", "s1", "end") == 1
    assert log.count("mid", "s2", "start") == 1
    assert log.count("mid", "s2", "start", pid=points.second_pid) == 1


def test_kill_between_steps_runs_every_step_once(points: PointsRun) -> None:
    task_id, log = points.ids["between"], points.log
    assert points.snapshot.has_step(task_id, "s0")
    assert points.snapshot.has_step(task_id, "s1")
    assert not points.snapshot.has_step(task_id, "s2")
    assert log.count("between", "body", "run") == 2  # re-entered, replaying
    for step in ("s0", "s1", "s2"):
        assert log.count("between", step, "start") == 1, step
        assert log.count("between", step, "end") == 1, step
    assert log.count("between", "s2", "start", pid=points.second_pid) == 1


def test_kill_during_retry_backoff_keeps_the_retry(points: PointsRun) -> None:
    row = points.snapshot.tasks[points.ids["retry"]]
    assert (row.status, row.phase, row.retries) == ("working", "parked", 1)
    assert row.not_before is not None
    # Only attempt 1 ran before the kill: the kill landed in the backoff.
    assert points.log_at_kill.count("retry", "body") == 1
    assert points.log_at_kill.count("retry", "body", "attempt-1") == 1
    log = points.log
    (second_attempt,) = [
        e for e in log.entries if e.key == "retry" and e.phase == "attempt-2"
    ]
    assert second_attempt.pid == points.second_pid
    assert second_attempt.at >= row.not_before, "the restart skipped the backoff"
    assert log.count("retry", "s0", "start") == 1  # recorded before the retry
    assert log.count("retry", "s1", "start", pid=points.second_pid) == 1


def test_fail_policy_ends_interrupted_task_failed(points: PointsRun) -> None:
    task = points.after_restart["fail"]
    assert task["status"] == "failed"
    assert "interrupted" in task["statusMessage"]
    assert "does not resume interrupted work" in task["statusMessage"]
    error = points.results["fail"].get("error")
    assert error is not None, points.results["fail"]
    assert error["message"] == task["statusMessage"]
    assert points.log.count("fail", "body") == 1
    assert points.log.count("fail", "body", pid=points.second_pid) == 0


def test_restart_policy_reruns_from_the_top(points: PointsRun) -> None:
    assert points.snapshot.has_step(points.ids["restart"], "s1")
    log = points.log
    for step in ("s0", "s1"):  # recorded, then forgotten by the restart policy
        assert log.count("restart", step, "start", pid=points.first_pid) == 1, step
        assert log.count("restart", step, "start", pid=points.second_pid) == 1, step
    assert log.count("restart", "s2", "start") == 1


def _long_progress(workspace: Workspace, pid: int, at_least: int) -> bool:
    """Whether server ``pid`` reported at least ``at_least`` finished mix-long steps."""
    ended = [
        e for e in workspace.channel.entries if e.key == "mix-long" and e.pid == pid
    ]
    return sum(1 for e in ended if e.phase == "end") >= at_least


async def test_mixed_tasks_survive_two_kills(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    workspace = Workspace(tmp_path)
    async with serving(workspace, label="first") as first:
        async with first.client() as client:
            ids = {key: await submit(client, *INPUTS[key]) for key in MIX}
            # Finished before the first kill: must never run again.
            assert await outcome(client, ids["mix-fail"]) == reference["mix-fail"]
        await first.reached("mix-twice", "in-s0")
        await first.reached("mix-between", "before-s1")
        await first.reached("mix-restart", "in-s1")
        await first.wait_until(
            lambda: _long_progress(workspace, first.pid, 5), "mix-long to be under way"
        )
        first.kill()
    first_snapshot = _snapshot(workspace, "first")
    assert first_snapshot.tasks[ids["mix-long"]].phase == "running"

    for key, point in (
        ("mix-twice", "in-s0"),
        ("mix-between", "before-s1"),
        ("mix-restart", "in-s1"),
    ):
        workspace.open_gate(key, point)
    async with serving(workspace, label="second") as second:
        await second.reached("mix-twice", "in-s2")
        await second.wait_until(
            lambda: _long_progress(workspace, second.pid, 1), "mix-long to resume"
        )
        second.kill()  # killed again, during recovery work
    second_snapshot = _snapshot(workspace, "second")

    workspace.open_gate("mix-twice", "in-s2")
    async with serving(workspace, label="third") as third, third.client() as client:
        results = await outcomes(client, ids)
        listed = {task["taskId"] for task in await list_all(client)}
    assert listed == set(ids.values())
    assert results == {key: reference[key] for key in MIX}

    log = workspace.side_log()
    check_exactly_once_recording(
        log,
        [(first.pid, first_snapshot), (second.pid, second_snapshot), (third.pid, None)],
        forgetful=frozenset({ids["mix-restart"]}),
    )
    # Interrupted mid-body in the first and second server respectively.
    assert [
        e.pid for e in log.entries if e.key == "mix-twice" and e.phase == "start"
    ] == [
        first.pid,  # s0, interrupted
        second.pid,  # s0 again
        second.pid,  # s1
        second.pid,  # s2, interrupted
        third.pid,  # s2 again
    ]
    assert log.count("mix-fail", "body") == 1
    for key in MIX:
        if key != "mix-fail":  # no steps
            assert log.count(key, "s0", "end") >= 1, key


# ---------------------------------------------------------- start-up errors


def _assert_clear_journal_error(stderr: str, db: Path) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("mcp-tasks: ")]
    assert lines, f"no 'mcp-tasks: ...' error line in:\n{stderr}"
    assert str(db) in lines[-1]
    return lines[-1]


def test_garbage_journal_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    garbage = b"this is not an SQLite database\n" * 200
    db.write_bytes(garbage)
    done = run_cli("serve", "--db", str(db), "--tools", str(tmp_path))
    assert done.returncode == EXIT_JOURNAL, done.stderr
    line = _assert_clear_journal_error(done.stderr, db)
    assert "not a database" in line
    assert db.read_bytes() == garbage


@pytest.mark.parametrize("where", ["under-a-file", "missing-folder", "a-folder"])
def test_unusable_journal_location_is_refused(tmp_path: Path, where: str) -> None:
    if where == "under-a-file":
        (tmp_path / "plain-file").write_text("x")
        db = tmp_path / "plain-file" / "journal.db"
    elif where == "missing-folder":
        db = tmp_path / "no-such-folder" / "journal.db"
    else:
        db = tmp_path / "journal.db"
        db.mkdir()
    done = run_cli("serve", "--db", str(db), "--tools", str(tmp_path))
    assert done.returncode == EXIT_JOURNAL, done.stderr
    _assert_clear_journal_error(done.stderr, db)


async def _make_journal(db: Path) -> None:
    async with SqliteJournal.open(db):
        pass


def test_newer_schema_is_refused_without_changes(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    anyio.run(_make_journal, db, backend="asyncio")
    assert 0 < user_version(db) < 99
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    before = db.read_bytes()

    done = run_cli("serve", "--db", str(db), "--tools", str(tmp_path))
    assert done.returncode == EXIT_JOURNAL, done.stderr
    line = _assert_clear_journal_error(done.stderr, db)
    assert "99" in line
    assert db.read_bytes() == before
    assert user_version(db) == 99


async def test_a_second_server_on_the_same_journal_serves_it_too(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    # One journal is the only state: a second server on it is not refused, and
    # a task accepted by one is seen and finished whichever answers.
    workspace = Workspace(tmp_path)
    async with serving(workspace) as first, first.client() as client:
        task_id = await submit(client, *INPUTS["flood-01"])
        async with (
            serving(workspace, label="second") as second,
            second.client() as other,
        ):
            assert first.alive()
            assert second.alive()
            assert await outcome(other, task_id) == reference["flood-01"]
        assert await outcome(client, task_id) == reference["flood-01"]
