"""Task ids: unguessable, URL-safe, time-ordered, never repeated across a fork."""

from __future__ import annotations

import os
import re

from hypothesis import given
from hypothesis import strategies as st

from mcp_tasks._model import TASK_ID_RANDOM_BYTES, encode_task_id, new_task_id

URL_SAFE = re.compile(r"[0-9A-Za-z_~]{40}")
MILLIS = st.integers(min_value=0, max_value=2**48 - 1)
RANDOM = st.binary(min_size=TASK_ID_RANDOM_BYTES, max_size=TASK_ID_RANDOM_BYTES)


def test_ids_are_40_url_safe_characters_that_never_start_with_a_dash() -> None:
    ids = [new_task_id() for _ in range(2_000)]
    assert all(URL_SAFE.fullmatch(task_id) for task_id in ids)
    assert len(set(ids)) == len(ids)


@given(MILLIS, RANDOM, MILLIS, RANDOM)
def test_ids_sort_as_their_time_then_random_bytes(
    first_ms: int, first: bytes, second_ms: int, second: bytes
) -> None:
    # What keeps a batch of inserts on neighbouring B-tree pages.
    a, b = encode_task_id(first_ms, first), encode_task_id(second_ms, second)
    assert (a < b) == ((first_ms, first) < (second_ms, second))
    assert URL_SAFE.fullmatch(a)


def test_the_random_part_is_all_that_differs_within_one_millisecond() -> None:
    same_time = encode_task_id(1_790_000_000_000, bytes(TASK_ID_RANDOM_BYTES))
    other = encode_task_id(1_790_000_000_000, b"\xff" * TASK_ID_RANDOM_BYTES)
    assert same_time[:8] == other[:8]
    assert same_time[8:] != other[8:]


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    new_task_id()  # the parent's pool now holds unused random bytes
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write_end, new_task_id().encode())
        os._exit(0)
    os.close(write_end)
    parent_id = new_task_id()
    with os.fdopen(read_end, "rb") as pipe:
        child_id = pipe.read().decode()
    os.waitpid(child, 0)
    assert len(child_id) == 40
    assert child_id[8:] != parent_id[8:]  # the random parts (after the time)
