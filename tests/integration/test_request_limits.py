"""Each client's task requests at its rate, across processes on one journal.

Two `TaskRuntime` objects on one journal file stand for two processes; a
fake clock they share makes the buckets' refills exact.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_tasks import OwnerId, RateLimitedError, Requester, Settings, TaskRuntime

from ..quiesce import settle_tasks
from .gated_tools import Gates, make_tools

ALICE = Requester(OwnerId("alice"))
BOB = Requester(OwnerId("bob"))
#: Small enough that a tenth of a second added to it is still at least 0.1 s.
T0 = 1_000_000.0
TIMEOUT = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


OpenRuntime = Callable[..., AbstractAsyncContextManager[TaskRuntime]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def open_runtime(tmp_path: Path) -> OpenRuntime:
    tools = make_tools(Gates())

    @asynccontextmanager
    async def open_(
        clock: Callable[[], float] | None = None, **limits: Any
    ) -> AsyncGenerator[TaskRuntime]:
        settings = Settings(synchronous="NORMAL", shutdown_grace_seconds=0.05, **limits)
        opened = TaskRuntime.open(
            tmp_path / "tasks.db",
            settings,
            tools,
            **({"clock": clock} if clock else {}),
        )
        async with opened as runtime:
            yield runtime

    return open_


async def admitted(runtime: TaskRuntime, requester: Requester) -> bool:
    try:
        await runtime.admit_request(requester)
    except RateLimitedError:
        return False
    return True


async def test_a_client_over_its_burst_is_refused_saying_when_to_retry(
    open_runtime: OpenRuntime, clock: FakeClock
) -> None:
    limits = {"requests_per_second": 10, "request_burst": 3, "request_delay_seconds": 0}
    async with open_runtime(clock, **limits) as runtime:
        for _ in range(3):
            await runtime.admit_request(ALICE)
        with pytest.raises(RateLimitedError) as refused:
            await runtime.admit_request(ALICE)
        assert await admitted(runtime, BOB)  # another client has its own rate
        clock.now += 0.1  # one request's worth
        assert await admitted(runtime, ALICE)
        assert not await admitted(runtime, ALICE)
    assert refused.value.retry_after_seconds == pytest.approx(0.1)
    assert refused.value.per_second == 10
    assert "may make 10 task requests per second" in str(refused.value)


async def test_processes_on_one_journal_share_a_clients_rate(
    open_runtime: OpenRuntime, clock: FakeClock
) -> None:
    # 100/s, at most 20 at once: each process leases 10 at a time.
    limits = {
        "requests_per_second": 100,
        "request_burst": 20,
        "request_delay_seconds": 0,
    }
    async with (
        open_runtime(clock, **limits) as first,
        open_runtime(clock, **limits) as second,
    ):
        served = 0
        for _ in range(50):
            for runtime in (first, second):
                served += await admitted(runtime, ALICE)
        assert served == 20
        clock.now += 0.1  # ten more
        again = [await admitted(r, ALICE) for r in (first, second) for _ in range(10)]
    assert sum(again) == 10


async def test_a_lease_left_unused_is_given_back_to_the_other_processes(
    open_runtime: OpenRuntime, clock: FakeClock
) -> None:
    limits = {
        "requests_per_second": 100,
        "request_burst": 10,
        "request_delay_seconds": 0,
    }
    async with (
        open_runtime(clock, **limits) as first,
        open_runtime(clock, **limits) as second,
    ):
        assert await admitted(first, ALICE)  # leases all 10, uses 1
        assert not await admitted(second, ALICE)
        clock.now += 0.05  # 5 refilled; the first still holds its lease
        assert [await admitted(second, ALICE) for _ in range(6)] == [True] * 5 + [False]
        clock.now += 0.06  # the first's lease is stale now: 6 more refilled, no more
        served = [await admitted(first, ALICE) for _ in range(10)]
    assert sum(served) == 6


async def test_a_request_over_the_rate_waits_its_turn_when_that_is_soon(
    open_runtime: OpenRuntime,
) -> None:
    # Real time: the next token comes in 50 ms, within the 1 s a request may wait.
    limits = {"requests_per_second": 20, "request_burst": 1, "request_delay_seconds": 1}
    async with open_runtime(None, **limits) as runtime:
        await runtime.admit_request(ALICE)
        with anyio.fail_after(TIMEOUT):
            await runtime.admit_request(ALICE)  # slowed down, not refused


async def test_a_client_with_its_burst_already_waiting_is_refused_at_once(
    open_runtime: OpenRuntime, clock: FakeClock
) -> None:
    limits = {
        "requests_per_second": 0.5,
        "request_burst": 1,
        "request_delay_seconds": 5,
    }
    # The clock stands still: the second request keeps waiting for its token
    # however slow the machine (with real time it could be admitted after 2 s,
    # before the third is made, and there would be nobody waiting).
    async with open_runtime(clock, **limits) as runtime:
        await runtime.admit_request(ALICE)
        async with anyio.create_task_group() as tg:
            tg.start_soon(runtime.admit_request, ALICE)  # waits for its token
            await settle_tasks()
            with anyio.fail_after(TIMEOUT), pytest.raises(RateLimitedError):
                await runtime.admit_request(ALICE)
            tg.cancel_scope.cancel()


async def test_a_flooding_client_costs_no_journal_write_per_refused_request(
    open_runtime: OpenRuntime, clock: FakeClock
) -> None:
    limits = {"requests_per_second": 10, "request_burst": 1, "request_delay_seconds": 0}
    async with open_runtime(clock, **limits) as runtime:
        await runtime.admit_request(ALICE)
        assert not await admitted(runtime, ALICE)  # asks the journal once
        before = runtime.statistics().journal_writes
        for _ in range(100):
            assert not await admitted(runtime, ALICE)
        after = runtime.statistics().journal_writes
    assert after == before


async def test_a_client_polling_over_its_rate_costs_two_writes_per_lease(
    open_runtime: OpenRuntime,
) -> None:
    """Slowed requests wait for a lease's worth of tokens, not one token each.

    Real time: 100/s leases 10 tokens at a time, so 60 requests back to back
    (about half a second) need 5 more leases after the first, each one budget
    write that finds the bucket empty and one that takes the lease. Taking a
    single token per slowed request cost two or three writes per request.
    """
    limits = {
        "requests_per_second": 100,
        "request_burst": 10,
        "request_delay_seconds": 1,
    }
    async with open_runtime(None, **limits) as runtime:
        for _ in range(10):
            await runtime.admit_request(ALICE)  # the burst
        before = runtime.statistics().journal_writes
        with anyio.fail_after(TIMEOUT):
            for _ in range(50):
                await runtime.admit_request(ALICE)
        writes = runtime.statistics().journal_writes - before
    assert writes <= 2 * 5 + 2


async def test_an_unlimited_client_is_never_slowed_and_writes_nothing(
    open_runtime: OpenRuntime,
) -> None:
    async with open_runtime(None, requests_per_second=None) as runtime:
        before = runtime.statistics().journal_writes
        for _ in range(1000):
            await runtime.admit_request(ALICE)
        assert runtime.statistics().journal_writes == before
