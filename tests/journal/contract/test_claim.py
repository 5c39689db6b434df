"""Contract: claiming is fair across clients, FIFO within one, and within every cap.

The caps are checked with several journal objects claiming at once on one
database (as several processes would): no interleaving may let a client run
more tasks than its cap, or any task be claimed twice.
"""

from __future__ import annotations

import itertools

import anyio

from mcp_tasks._model import OwnerId, TaskId
from mcp_tasks.journal import Claimed, Journal

from .support import (
    ACTOR,
    ALICE,
    BOB,
    CAROL,
    HOLDER,
    LEASE,
    OTHER_HOLDER,
    T0,
    complete,
    new_task,
)


async def claim_one(journal: Journal, holder: str = HOLDER) -> Claimed | None:
    claimed = await journal.claim(holder, T0 + LEASE, 1, T0)
    return claimed[0] if claimed else None


async def owners_in_claim_order(journal: Journal, count: int) -> list[OwnerId]:
    order: list[OwnerId] = []
    for _ in range(count):
        claimed = await claim_one(journal)
        assert claimed is not None
        order.append(claimed.owner_id)
        # End it at once, so caps never get in the way of the order.
        await complete(journal, claimed)
    return order


async def test_a_claim_takes_a_queued_task_once_under_a_new_lease(
    journal: Journal,
) -> None:
    new = new_task(arguments={"x": 1}, request_meta={"m": True})
    await journal.submit(new)
    assert await journal.claimable()
    claimed = await claim_one(journal)
    assert claimed is not None
    assert claimed.task_id == new.task_id
    assert claimed.lease.holder == HOLDER
    assert claimed.attempt == 1
    assert (claimed.owner_id, claimed.tool_name) == (ALICE, "echo")
    assert claimed.arguments == {"x": 1}
    assert claimed.request_meta == {"m": True}
    assert claimed.retries == 0
    assert not await journal.claimable()
    assert await claim_one(journal) is None


async def test_nothing_to_claim_is_an_empty_list(journal: Journal) -> None:
    assert not await journal.claimable()
    assert await journal.claim(HOLDER, T0 + LEASE, 8, T0) == []


async def test_cancelled_tasks_are_never_claimed(journal: Journal) -> None:
    new = new_task()
    await journal.submit(new)
    await journal.cancel(new.task_id, "stop", "test", T0, by=ACTOR)
    assert not await journal.claimable()
    assert await claim_one(journal) is None


async def test_a_client_is_served_first_in_first_out(journal: Journal) -> None:
    tasks = [new_task(concurrency=10) for _ in range(5)]
    for new in tasks:
        await journal.submit(new)
    claimed = await journal.claim(HOLDER, T0 + LEASE, 10, T0)
    assert [c.task_id for c in claimed] == [n.task_id for n in tasks]


async def test_clients_with_queued_work_take_turns(journal: Journal) -> None:
    for owner in (ALICE, BOB, CAROL):
        for _ in range(3):
            await journal.submit(new_task(owner))
    order = await owners_in_claim_order(journal, 9)
    assert order == [ALICE, BOB, CAROL] * 3


async def test_one_claim_of_many_tasks_takes_turns_too(journal: Journal) -> None:
    for owner in (ALICE, BOB):
        for _ in range(3):
            await journal.submit(new_task(owner, concurrency=10))
    claimed = await journal.claim(HOLDER, T0 + LEASE, 6, T0)
    assert [c.owner_id for c in claimed] == [ALICE, BOB] * 3


async def test_a_newcomer_waits_behind_no_burst(journal: Journal) -> None:
    for _ in range(50):
        await journal.submit(new_task(ALICE, concurrency=100))
    first = await journal.claim(HOLDER, T0 + LEASE, 5, T0)
    assert {c.owner_id for c in first} == {ALICE}
    late = new_task(BOB)
    await journal.submit(late)
    claimed = await claim_one(journal)
    assert claimed is not None
    assert claimed.task_id == late.task_id


async def test_a_client_at_its_cap_is_skipped_until_a_task_ends(
    journal: Journal,
) -> None:
    for _ in range(4):
        await journal.submit(new_task(ALICE, concurrency=2))
    await journal.submit(new_task(BOB, concurrency=2))
    claimed = await journal.claim(HOLDER, T0 + LEASE, 10, T0)
    assert sorted(c.owner_id for c in claimed) == [ALICE, ALICE, BOB]
    assert await journal.claim(HOLDER, T0 + LEASE, 10, T0) == []
    assert not await journal.claimable()
    alice_run = next(c for c in claimed if c.owner_id == ALICE)
    await complete(journal, alice_run)
    assert await journal.claimable()
    (again,) = await journal.claim(HOLDER, T0 + LEASE, 10, T0)
    assert again.owner_id == ALICE


async def test_the_cap_recorded_by_sync_limits_applies_to_claims(
    journal: Journal,
) -> None:
    for _ in range(5):
        await journal.submit(new_task(ALICE, concurrency=1))
    await journal.sync_limits(3, 10_000, {})
    assert len(await journal.claim(HOLDER, T0 + LEASE, 10, T0)) == 3


async def test_two_journals_never_claim_one_task_twice(
    journal: Journal, other: Journal
) -> None:
    owners = [OwnerId(f"client-{n}") for n in range(5)]
    submitted = [new_task(owners[n % 5], concurrency=100) for n in range(100)]
    for new in submitted:
        await journal.submit(new)
    claimed: list[tuple[str, TaskId]] = []

    async def claimer(target: Journal, holder: str) -> None:
        while batch := await target.claim(holder, T0 + LEASE, 3, T0):
            claimed.extend((holder, c.task_id) for c in batch)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for n in range(4):
                target = journal if n % 2 else other
                tg.start_soon(claimer, target, f"{HOLDER}-{n}")
    ids = [task_id for _, task_id in claimed]
    assert sorted(ids) == sorted(n.task_id for n in submitted)
    assert len(set(ids)) == len(ids)
    assert len({holder for holder, _ in claimed}) > 1


async def test_caps_hold_exactly_with_many_claimers_on_two_journals(
    journal: Journal, other: Journal
) -> None:
    """Rounds of racing claimers on both journals fill every cap, and never more."""
    caps = {ALICE: 2, BOB: 1, CAROL: 3}
    for owner, cap in caps.items():
        for _ in range(12):
            await journal.submit(new_task(owner, concurrency=cap))
    holders = itertools.count()
    remaining = dict.fromkeys(caps, 12)
    finished = 0

    async def claimer(target: Journal, into: list[tuple[Journal, Claimed]]) -> None:
        holder = f"{OTHER_HOLDER}-{next(holders)}"
        while batch := await target.claim(holder, T0 + LEASE, 2, T0):
            into.extend((target, c) for c in batch)

    while finished < 36:
        round_claims: list[tuple[Journal, Claimed]] = []
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(6):
                    tg.start_soon(claimer, journal if n % 2 else other, round_claims)
        running: dict[OwnerId, int] = {}
        for _, claimed in round_claims:
            running[claimed.owner_id] = running.get(claimed.owner_id, 0) + 1
        for owner, cap in caps.items():
            # Every cap is filled (there is enough work), and never exceeded.
            assert running.get(owner, 0) == min(cap, remaining[owner])
            remaining[owner] -= running.get(owner, 0)
        loads = {load.owner_id: load.running for load in await other.load()}
        assert loads == {o: n for o, n in running.items() if n}
        for target, claimed in round_claims:
            await complete(target, claimed)
        finished += len(round_claims)
        assert round_claims, "a round claimed nothing while work was left"
    assert finished == 36
