"""The pure task model: statuses, the transition table and its helpers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from mcp_tasks._exceptions import InvalidTransitionError
from mcp_tasks._model import (
    ACTIVE_STATUSES,
    INITIAL_STATUS,
    TERMINAL_STATUSES,
    TRANSITIONS,
    Outcome,
    OwnerId,
    Task,
    TaskId,
    TaskStatus,
    can_transition,
    check_transition,
    sources_of,
)

W = TaskStatus.WORKING
I = TaskStatus.INPUT_REQUIRED  # noqa: E741
C = TaskStatus.COMPLETED
F = TaskStatus.FAILED
X = TaskStatus.CANCELLED

#: The spec's lifecycle, written out independently of `TRANSITIONS`.
SPEC_TABLE: dict[TaskStatus, set[TaskStatus]] = {
    W: {I, C, F, X},
    I: {W, C, F, X},
    C: set(),
    F: set(),
    X: set(),
}

ALL_PAIRS = [(a, b) for a in TaskStatus for b in TaskStatus]


def test_the_status_values_are_spelled_as_on_the_wire() -> None:
    assert {s.name: s.value for s in TaskStatus} == {
        "WORKING": "working",
        "INPUT_REQUIRED": "input_required",
        "COMPLETED": "completed",
        "FAILED": "failed",
        "CANCELLED": "cancelled",
    }


def test_statuses_compare_equal_to_their_wire_strings() -> None:
    assert TaskStatus("input_required") is I
    assert str(X) == "cancelled"


def test_the_transition_table_is_exactly_the_spec_table() -> None:
    assert {k: set(v) for k, v in TRANSITIONS.items()} == SPEC_TABLE


def test_a_task_is_created_in_working() -> None:
    assert INITIAL_STATUS is W


def test_exactly_completed_failed_and_cancelled_are_terminal() -> None:
    assert {s for s in TaskStatus if s.is_terminal} == {C, F, X}
    assert TERMINAL_STATUSES == {C, F, X}
    assert ACTIVE_STATUSES == {W, I}


@pytest.mark.parametrize(("current", "new"), ALL_PAIRS)
def test_can_transition_accepts_exactly_the_spec_pairs(
    current: TaskStatus, new: TaskStatus
) -> None:
    assert can_transition(current, new) is (new in SPEC_TABLE[current])


@pytest.mark.parametrize(("current", "new"), ALL_PAIRS)
def test_check_transition_raises_exactly_for_forbidden_pairs(
    current: TaskStatus, new: TaskStatus
) -> None:
    if new in SPEC_TABLE[current]:
        check_transition("t-1", current, new)
        return
    with pytest.raises(InvalidTransitionError) as caught:
        check_transition("t-1", current, new)
    assert (caught.value.task_id, caught.value.current, caught.value.requested) == (
        "t-1",
        current,
        new,
    )


@pytest.mark.parametrize("target", list(TaskStatus))
def test_sources_of_lists_every_status_that_may_reach_the_target(
    target: TaskStatus,
) -> None:
    expected = {s for s, targets in SPEC_TABLE.items() if target in targets}
    assert sources_of(target) == expected


def test_nothing_leads_back_to_working_except_input_required() -> None:
    assert sources_of(W) == {I}


class TaskLifecycle(RuleBasedStateMachine):
    """Random walks over the state machine, one or more tasks at a time.

    The machine tracks each task's status using only `SPEC_TABLE`, and drives
    the model's helpers with allowed and forbidden moves alike.
    """

    tasks = Bundle("tasks")

    def __init__(self) -> None:
        super().__init__()
        self.status: dict[str, TaskStatus] = {}
        self.counter = 0

    @initialize(target=tasks)
    def first_task(self) -> str:
        return self._create()

    @rule(target=tasks)
    def create(self) -> str:
        return self._create()

    def _create(self) -> str:
        self.counter += 1
        task_id = f"task-{self.counter}"
        self.status[task_id] = INITIAL_STATUS
        assert self.status[task_id] is W
        return task_id

    @rule(task=tasks, new=st.sampled_from(list(TaskStatus)))
    def move(self, task: str, new: TaskStatus) -> None:
        current = self.status[task]
        allowed = new in SPEC_TABLE[current]
        assert can_transition(current, new) is allowed
        if allowed:
            check_transition(task, current, new)
            assert current in sources_of(new)
            self.status[task] = new
        else:
            with pytest.raises(InvalidTransitionError):
                check_transition(task, current, new)
            assert current not in sources_of(new)

    @invariant()
    def terminal_states_absorb(self) -> None:
        for task, status in self.status.items():
            if not status.is_terminal:
                continue
            assert TRANSITIONS[status] == frozenset()
            for new in TaskStatus:
                assert not can_transition(status, new)
                with pytest.raises(InvalidTransitionError):
                    check_transition(task, status, new)

    @invariant()
    def only_pairs_in_the_table_are_accepted(self) -> None:
        for current, new in ALL_PAIRS:
            assert can_transition(current, new) is (new in TRANSITIONS[current])

    @invariant()
    def sources_of_is_the_inverse_of_the_table(self) -> None:
        for target in TaskStatus:
            reach = {s for s in TaskStatus if can_transition(s, target)}
            assert sources_of(target) == reach

    @invariant()
    def every_status_is_a_real_status(self) -> None:
        for status in self.status.values():
            assert status in TRANSITIONS
            assert status.is_terminal is (status in TERMINAL_STATUSES)


TaskLifecycle.TestCase.settings = settings(max_examples=100, stateful_step_count=30)
test_task_lifecycle = TaskLifecycle.TestCase


def test_with_status_message_changes_that_field_and_keeps_every_other() -> None:
    # Every field gets a value other than its default, so a field added to Task
    # and forgotten in with_status_message makes this fail.
    moment = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    task = Task(
        task_id=TaskId("t-1"),
        owner_id=OwnerId("alice"),
        tool_name="wait",
        status=TaskStatus.COMPLETED,
        status_message="old",
        created_at=moment,
        last_updated_at=moment + timedelta(seconds=5),
        ttl_seconds=60.0,
        poll_interval_seconds=2.0,
        outcome=Outcome(result={"content": []}),
        listed=False,
        tool_error="bad",
        queued_ahead=3,
        progress=1.0,
        progress_total=2.0,
        client_limit=4,
    )
    changed = task.with_status_message("new")
    assert changed.status_message == "new"
    for field in dataclasses.fields(Task):
        if field.name != "status_message":
            assert getattr(changed, field.name) == getattr(task, field.name), field.name
            assert getattr(task, field.name) != field.default, field.name
