"""`FairScheduler`: global limit, per-client caps, FIFO and round-robin fairness."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_tasks._model import OwnerId, TaskId
from mcp_tasks._scheduler import FairScheduler, SchedulerStatistics

A = OwnerId("alice")
B = OwnerId("bob")
C = OwnerId("carol")


def caps(
    table: Mapping[OwnerId, int], default: int = 1_000
) -> Callable[[OwnerId], int]:
    def cap_of(owner: OwnerId) -> int:
        return table.get(owner, default)

    return cap_of


def tid(owner: OwnerId, n: int) -> TaskId:
    return TaskId(f"{owner}-{n}")


def push_many(s: FairScheduler, owner: OwnerId, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        s.push(owner, tid(owner, n))


def drain(s: FairScheduler) -> list[tuple[OwnerId, TaskId]]:
    """Start tasks until `next` says nothing more may start."""
    started: list[tuple[OwnerId, TaskId]] = []
    while (item := s.next()) is not None:
        started.append(item)
    return started


def test_a_worker_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="worker_limit"):
        FairScheduler(0, caps({}))


def test_an_empty_scheduler_starts_nothing() -> None:
    assert FairScheduler(4, caps({})).next() is None


def test_the_global_worker_limit_is_never_exceeded() -> None:
    s = FairScheduler(3, caps({}))
    for owner in (A, B, C):
        push_many(s, owner, 5)
    assert len(drain(s)) == 3
    assert s.statistics().running == 3
    s.release(A)
    assert len(drain(s)) == 1
    assert s.statistics().running == 3


def test_each_client_is_held_to_its_own_cap() -> None:
    s = FairScheduler(100, caps({A: 1, B: 2, C: 3}))
    for owner in (A, B, C):
        push_many(s, owner, 10)
    started = drain(s)
    assert [o for o, _ in started].count(A) == 1
    assert [o for o, _ in started].count(B) == 2
    assert [o for o, _ in started].count(C) == 3
    assert (s.running(A), s.running(B), s.running(C)) == (1, 2, 3)
    s.release(B)
    assert drain(s) == [(B, tid(B, 2))]


def test_a_client_at_its_cap_does_not_block_other_clients() -> None:
    s = FairScheduler(10, caps({A: 1}))
    push_many(s, A, 3)
    push_many(s, B, 2)
    assert drain(s) == [(A, tid(A, 0)), (B, tid(B, 0)), (B, tid(B, 1))]


def test_tasks_of_one_client_start_in_the_order_they_were_pushed() -> None:
    s = FairScheduler(1, caps({}))
    push_many(s, A, 20)
    started: list[TaskId] = []
    for _ in range(20):
        item = s.next()
        assert item is not None
        started.append(item[1])
        s.release(A)
    assert started == [tid(A, n) for n in range(20)]


def test_clients_with_backlogs_take_turns_one_task_each() -> None:
    s = FairScheduler(100, caps({}))
    push_many(s, A, 3)
    push_many(s, B, 2)
    push_many(s, C, 1)
    assert drain(s) == [
        (A, tid(A, 0)),
        (B, tid(B, 0)),
        (C, tid(C, 0)),
        (A, tid(A, 1)),
        (B, tid(B, 1)),
        (A, tid(A, 2)),
    ]


def test_a_newcomer_starts_first_when_another_clients_worker_frees() -> None:
    # Alice has 5,000 tasks queued and runs at her cap; Carol holds the last
    # worker. When Carol's worker frees, Bob's single task is the next to start.
    s = FairScheduler(5, caps({A: 4}))
    push_many(s, A, 5_000)
    s.push(C, tid(C, 0))
    assert len(drain(s)) == 5
    s.push(B, tid(B, 0))
    assert s.next() is None
    s.release(C)
    assert s.next() == (B, tid(B, 0))


def test_a_newcomer_starts_first_when_the_capped_clients_own_worker_frees() -> None:
    # Alice has 5,000 tasks queued and holds every worker, at her cap. Bob pushes
    # one task. Alice was not ready when Bob arrived, so when one of her workers
    # frees, Bob's task is the very next one to start.
    s = FairScheduler(4, caps({A: 4}))
    push_many(s, A, 5_000)
    assert len(drain(s)) == 4
    s.push(B, tid(B, 0))
    assert s.next() is None
    s.release(A)
    assert s.next() == (B, tid(B, 0))


def test_a_newcomer_behind_a_ready_client_waits_at_most_one_turn() -> None:
    # Alice is under her cap but the workers are all busy with her tasks; Bob's
    # newer task starts no later than the second freed worker.
    s = FairScheduler(2, caps({A: 10}))
    push_many(s, A, 5_000)
    assert len(drain(s)) == 2
    s.push(B, tid(B, 0))
    started: list[OwnerId] = []
    for _ in range(2):
        s.release(A)
        item = s.next()
        assert item is not None
        started.append(item[0])
        if item[0] == B:
            break
    assert B in started


def test_remove_drops_a_queued_task() -> None:
    s = FairScheduler(10, caps({}))
    push_many(s, A, 3)
    assert s.remove(A, tid(A, 1)) is True
    assert s.queued(A) == 2
    assert drain(s) == [(A, tid(A, 0)), (A, tid(A, 2))]


def test_remove_of_the_last_queued_task_takes_the_client_out_of_the_rotation() -> None:
    s = FairScheduler(10, caps({}))
    s.push(A, tid(A, 0))
    s.push(B, tid(B, 0))
    assert s.remove(A, tid(A, 0)) is True
    assert s.statistics().clients_waiting == 1
    assert drain(s) == [(B, tid(B, 0))]


def test_remove_of_a_task_that_is_not_queued_reports_false() -> None:
    s = FairScheduler(10, caps({}))
    assert s.remove(A, tid(A, 0)) is False
    s.push(A, tid(A, 0))
    assert s.remove(A, tid(A, 9)) is False
    assert s.remove(B, tid(A, 0)) is False
    assert s.next() == (A, tid(A, 0))
    assert s.remove(A, tid(A, 0)) is False
    assert s.statistics().queued == 0


def test_position_is_the_one_based_place_in_the_clients_queue() -> None:
    s = FairScheduler(1, caps({}))
    push_many(s, A, 3)
    s.push(B, tid(B, 0))
    assert [s.position(A, tid(A, n)) for n in range(3)] == [1, 2, 3]
    assert s.position(B, tid(B, 0)) == 1
    assert s.next() == (A, tid(A, 0))
    assert s.position(A, tid(A, 0)) is None
    assert s.position(A, tid(A, 2)) == 2
    assert s.position(A, tid(B, 0)) is None
    assert s.position(C, tid(C, 0)) is None


def test_release_without_a_running_task_raises() -> None:
    s = FairScheduler(2, caps({}))
    with pytest.raises(RuntimeError, match="release without a running task"):
        s.release(A)
    s.push(A, tid(A, 0))
    assert s.next() is not None
    s.release(A)
    with pytest.raises(RuntimeError):
        s.release(A)
    assert s.statistics().running == 0


def test_statistics_report_running_queued_limit_and_waiting_clients() -> None:
    s = FairScheduler(3, caps({A: 1}))
    assert s.statistics() == SchedulerStatistics(0, 0, 3, 0)
    push_many(s, A, 4)
    push_many(s, B, 2)
    assert s.statistics() == SchedulerStatistics(0, 6, 3, 2)
    drain(s)  # A once (cap), B twice
    assert s.statistics() == SchedulerStatistics(3, 3, 3, 1)
    assert (s.queued(A), s.queued(B), s.running(A), s.running(B)) == (3, 0, 1, 2)


# --------------------------------------------------------------- properties

OWNERS = [OwnerId(f"client-{n}") for n in range(4)]

_push = st.tuples(st.just("push"), st.integers(0, len(OWNERS) - 1))
_next = st.tuples(st.just("next"), st.just(0))
_release = st.tuples(st.just("release"), st.integers(0, len(OWNERS) - 1))
_remove = st.tuples(st.just("remove"), st.integers(0, 50))
OPS = st.lists(st.one_of(_push, _next, _release, _remove), max_size=120)


class Checked:
    """Drives a `FairScheduler` and checks every invariant after each step."""

    def __init__(self, worker_limit: int, cap_table: dict[OwnerId, int]) -> None:
        self.limit = worker_limit
        self.cap_table = cap_table
        self.s = FairScheduler(worker_limit, caps(cap_table))
        self.counter = 0
        self.queued: dict[OwnerId, list[TaskId]] = {o: [] for o in OWNERS}
        self.running: dict[OwnerId, int] = dict.fromkeys(OWNERS, 0)
        self.started: list[TaskId] = []

    def push(self, owner: OwnerId) -> None:
        self.counter += 1
        task = TaskId(f"{owner}#{self.counter}")
        self.s.push(owner, task)
        self.queued[owner].append(task)

    def next(self) -> tuple[OwnerId, TaskId] | None:
        item = self.s.next()
        if item is None:
            # Nothing may start only if the pool is full or every client with
            # queued work sits at its cap.
            total = sum(self.running.values())
            assert total == self.limit or all(
                not q or self.running[o] >= self.cap_table[o]
                for o, q in self.queued.items()
            )
            return None
        owner, task = item
        # FIFO within a client: always the oldest of its queued tasks.
        assert self.queued[owner][0] == task
        self.queued[owner].pop(0)
        self.running[owner] += 1
        self.started.append(task)
        return item

    def release(self, owner: OwnerId) -> None:
        if self.running[owner] == 0:
            with pytest.raises(RuntimeError):
                self.s.release(owner)
            return
        self.s.release(owner)
        self.running[owner] -= 1

    def remove(self, pick: int) -> None:
        everything = [(o, t) for o, q in self.queued.items() for t in q]
        if not everything:
            assert self.s.remove(OWNERS[0], TaskId("nothing")) is False
            return
        owner, task = everything[pick % len(everything)]
        assert self.s.remove(owner, task) is True
        self.queued[owner].remove(task)

    def check(self) -> None:
        stats = self.s.statistics()
        assert stats.running == sum(self.running.values()) <= self.limit
        assert stats.queued == sum(len(q) for q in self.queued.values())
        assert stats.clients_waiting == sum(1 for q in self.queued.values() if q)
        for owner in OWNERS:
            assert self.s.running(owner) == self.running[owner]
            assert self.running[owner] <= self.cap_table[owner]
            assert self.s.queued(owner) == len(self.queued[owner])
            for place, task in enumerate(self.queued[owner], start=1):
                assert self.s.position(owner, task) == place


settings_for_properties = settings(max_examples=300, deadline=None)


@settings_for_properties
@given(
    worker_limit=st.integers(1, 6),
    cap_values=st.lists(st.integers(1, 4), min_size=len(OWNERS), max_size=len(OWNERS)),
    ops=OPS,
)
def test_random_operations_keep_caps_limits_fifo_and_bookkeeping(
    worker_limit: int, cap_values: list[int], ops: list[tuple[str, int]]
) -> None:
    run = Checked(worker_limit, dict(zip(OWNERS, cap_values, strict=True)))
    for op, arg in ops:
        if op == "push":
            run.push(OWNERS[arg])
        elif op == "next":
            run.next()
        elif op == "release":
            run.release(OWNERS[arg])
        else:
            run.remove(arg)
        run.check()


@settings_for_properties
@given(
    worker_limit=st.integers(1, 6),
    cap_values=st.lists(st.integers(1, 4), min_size=len(OWNERS), max_size=len(OWNERS)),
    ops=OPS,
    release_order=st.randoms(use_true_random=False),
)
def test_every_queued_task_eventually_starts_when_workers_keep_freeing(
    worker_limit: int,
    cap_values: list[int],
    ops: list[tuple[str, int]],
    release_order: random.Random,
) -> None:
    run = Checked(worker_limit, dict(zip(OWNERS, cap_values, strict=True)))
    for op, arg in ops:
        if op == "push":
            run.push(OWNERS[arg])
        elif op == "next":
            run.next()
        elif op == "release":
            run.release(OWNERS[arg])
        else:
            run.remove(arg)
    waiting = {t for q in run.queued.values() for t in q}
    # Keep starting what may start and freeing one worker of a random busy
    # client. A step that starts nothing still lowers the running count, so a
    # fair scheduler needs at most this many steps.
    budget = 2 * len(waiting) + sum(run.running.values()) + 1
    while any(run.queued.values()):
        budget -= 1
        assert budget >= 0, "a queued task was starved"
        while run.next() is not None:
            run.check()
        busy = [o for o in OWNERS if run.running[o]]
        run.release(release_order.choice(busy))
        run.check()
    assert waiting <= set(run.started)


@settings_for_properties
@given(
    backlog=st.lists(st.integers(0, 30), min_size=len(OWNERS), max_size=len(OWNERS)),
)
def test_ready_clients_never_fall_more_than_one_turn_behind_each_other(
    backlog: list[int],
) -> None:
    # With one worker released after every start, the clients with work take
    # turns: between two starts of one client, every other client that still
    # had work queued starts once.
    s = FairScheduler(1, caps({}))
    for owner, count in zip(OWNERS, backlog, strict=True):
        push_many(s, owner, count)
    remaining = dict(zip(OWNERS, backlog, strict=True))
    last_turn: dict[OwnerId, int] = {}
    turn = 0
    while (item := s.next()) is not None:
        owner = item[0]
        previous = last_turn.get(owner)
        for other, left in remaining.items():
            if previous is not None and other != owner and left > 0:
                # `other` still waits, so it started since `owner`'s last turn.
                assert last_turn.get(other, -1) > previous
        remaining[owner] -= 1
        last_turn[owner] = turn
        turn += 1
        s.release(owner)
    assert all(left == 0 for left in remaining.values())
