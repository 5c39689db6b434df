"""Contract property: per-client counts always equal what the tasks themselves say.

Random sequences of every operation that moves a task, through two journals
on one database. After each step the counts `load` reports (which claims and
submits rely on for caps and backlogs) are compared with the tasks read one
by one, and no client may ever run more tasks than its cap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_tasks._exceptions import CapacityError
from mcp_tasks._model import InputRequest, OwnerId, TaskId, TaskStatus
from mcp_tasks.journal import Claimed, Journal, Recovery

from .support import ACTOR, LEASE, T0, complete, new_task

OWNERS = [OwnerId("a"), OwnerId("b"), OwnerId("c")]
CAPS = {"a": 1, "b": 2, "c": 3}
#: Weighted: tasks must get far enough (claimed, parked, asked) to be interesting.
OPERATIONS = [
    *["submit"] * 3,
    *["claim"] * 3,
    "finish",
    *["park"] * 2,
    *["ask"] * 2,
    *["answer"] * 2,
    "cancel",
    "release",
    "recover",
    *["wake"] * 2,
    "expire",
]


@dataclass
class World:
    journals: list[Journal]
    now: float = T0
    tasks: list[TaskId] = field(default_factory=list[TaskId])
    running: list[Claimed] = field(default_factory=list[Claimed])
    asked: list[TaskId] = field(default_factory=list[TaskId])


async def apply(world: World, operation: str, pick: int, via: int) -> None:
    journal = world.journals[via % len(world.journals)]
    world.now += 1
    now = world.now
    owner = OWNERS[pick % len(OWNERS)]
    if operation == "submit":
        new = new_task(owner, created_at=now, concurrency=CAPS[owner], backlog=6)
        try:
            await journal.submit(new)
            world.tasks.append(new.task_id)
        except CapacityError:
            pass
    elif operation == "claim":
        world.running += await journal.claim(
            f"h/{via}/x", now + LEASE, 1 + pick % 3, now
        )
    elif operation == "cancel" and world.tasks:
        await journal.cancel(
            world.tasks[pick % len(world.tasks)], "stop", "t", now, by=ACTOR
        )
    elif operation == "wake":
        world.now += 5  # time passes: parked tasks come due
        await journal.wake_due(world.now)
    elif operation == "expire":
        world.now += 5  # time passes: questions run out
        await journal.expire_questions(world.now, {"action": "timeout"})
    elif operation == "answer" and world.asked:
        task_id = world.asked[pick % len(world.asked)]
        keys = [r.key for r in await journal.input_requests(task_id) if r.is_open]
        await journal.answer(
            task_id, {key: {"action": "decline"} for key in keys}, now, by=ACTOR
        )
    elif world.running:
        claimed = world.running.pop(pick % len(world.running))
        await run_write(world, journal, operation, claimed, now, pick)


async def run_write(
    world: World,
    journal: Journal,
    operation: str,
    claimed: Claimed,
    now: float,
    pick: int,
) -> None:
    lease = claimed.lease
    if operation == "recover":
        # The run's process is gone: its task is recovered by a policy.
        for held in await journal.held_leases():
            if held.lease == lease:
                policy = Recovery(["resume", "restart", "fail"][pick % 3])
                await journal.recover(held, policy, "r", "t", now)
    elif operation == "finish":
        await complete(journal, claimed, at=now)
    elif operation == "park":
        await journal.park(lease, now + 1, "later", "retry", now, retry=True)
    elif operation == "ask":
        # Question keys are unique over a task's lifetime (the engine replays
        # an answered key rather than asking it again).
        key = f"q{now}"
        question = InputRequest(key, "elicitation/create", {}, expires_at=now + 1)
        if await journal.ask(lease, [question], "?", now) is not None:
            world.asked.append(claimed.task_id)
    elif operation == "release":
        await journal.release(lease, "back", "t", now)


async def check(world: World) -> None:
    journal = world.journals[0]
    expected: dict[str, list[int]] = {o: [0, 0, 0, 0] for o in CAPS}
    held = {h.lease.task_id for h in await journal.held_leases()}
    for task_id in world.tasks:
        task = await journal.get(task_id)
        assert task is not None
        counts = expected[task.owner_id]
        if task_id in held:  # running, or cancelled and still stopping
            counts[1] += 1
        elif task.is_terminal:
            continue
        elif task.queued_ahead is not None:
            counts[0] += 1
        elif task.status is TaskStatus.INPUT_REQUIRED:
            counts[3] += 1
        else:
            counts[2] += 1
    loads = {load.owner_id: load for load in await journal.load()}
    for owner, (queued, running, parked, waiting) in expected.items():
        load = loads.get(OwnerId(owner))
        got = (
            (0, 0, 0, 0)
            if load is None
            else (load.queued, load.running, load.parked, load.waiting)
        )
        assert got == (queued, running, parked, waiting), owner
        assert running <= CAPS[owner]


@settings(
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 50), st.integers(0, 1)),
        min_size=5,
        max_size=60,
    )
)
async def test_counts_always_match_the_tasks(
    journal: Journal, other: Journal, steps: list[tuple[str, int, int]]
) -> None:
    # The same two journals serve every example: start each from a clean slate
    # of owners by cancelling whatever an earlier example left unfinished.
    for load in await journal.load():
        for _, task in await journal.list_owned(load.owner_id, 0, 1000):
            await journal.cancel(task.task_id, "reset", "t", T0, by=ACTOR)
    for held in await journal.held_leases():  # their runs are gone: they stop
        await journal.recover(held, Recovery.RESUME, "reset", "t", T0)
    world = World([journal, other])
    for operation, pick, via in steps:
        await apply(world, operation, pick, via)
        await check(world)


async def test_every_move_between_buckets_is_counted(journal: Journal) -> None:
    """The same, deterministic: each kind of move once, counts checked after each."""
    world = World([journal])
    owner = OWNERS[0]

    async def expect(queued: int, running: int, parked: int, waiting: int) -> None:
        await check(world)
        (load,) = await journal.load(owner)
        assert (load.queued, load.running, load.parked, load.waiting) == (
            queued, running, parked, waiting,
        )  # fmt: skip

    await apply(world, "submit", 0, 0)
    await apply(world, "submit", 0, 0)
    await expect(2, 0, 0, 0)
    await apply(world, "claim", 0, 0)
    await expect(1, 1, 0, 0)
    await apply(world, "park", 0, 0)
    await expect(1, 0, 1, 0)
    await apply(world, "wake", 0, 0)
    await expect(2, 0, 0, 0)
    await apply(world, "claim", 0, 0)
    await apply(world, "ask", 0, 0)
    await expect(1, 0, 0, 1)
    await apply(world, "answer", 0, 0)
    await expect(2, 0, 0, 0)
    await apply(world, "claim", 0, 0)
    await apply(world, "ask", 0, 0)
    await apply(world, "expire", 0, 0)
    await expect(2, 0, 0, 0)
    await apply(world, "claim", 0, 0)
    await apply(world, "release", 0, 0)
    await expect(2, 0, 0, 0)
    await apply(world, "claim", 0, 0)
    await apply(world, "recover", 2, 0)  # fail
    await expect(1, 0, 0, 0)
    await apply(world, "claim", 0, 0)
    await apply(world, "finish", 0, 0)
    await expect(0, 0, 0, 0)
    await apply(world, "submit", 0, 0)
    await apply(world, "cancel", 2, 0)
    await expect(0, 0, 0, 0)
