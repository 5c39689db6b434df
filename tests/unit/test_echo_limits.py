"""How much of a client's value an error may echo (`excerpt`, `clip`)."""

from __future__ import annotations

from mcp_tasks._exceptions import (
    ECHO_LIMIT,
    MESSAGE_LIMIT,
    InvalidArgumentsError,
    TaskNotFoundError,
    clip,
    excerpt,
)


def test_excerpt_quotes_a_short_value_whole() -> None:
    assert excerpt("abc") == "'abc'"
    assert excerpt("x" * ECHO_LIMIT) == repr("x" * ECHO_LIMIT)


def test_excerpt_shows_a_prefix_and_the_length_of_a_long_value() -> None:
    assert excerpt("abcdef" + "x" * 10_000_000, 6) == "'abcdef'… (10000006 characters)"


def test_clip_keeps_head_and_tail_within_the_limit() -> None:
    text = "'" + "x" * 10_000 + "' is not of type 'integer'"
    clipped = clip(text)
    assert len(clipped) <= MESSAGE_LIMIT
    assert clipped.startswith("'xxx")
    assert clipped.endswith("' is not of type 'integer'")
    assert "(10027 characters)" in clipped
    assert clip("short") == "short"


def test_exception_messages_echo_only_a_prefix() -> None:
    huge = "x" * 10_000_000
    assert len(str(TaskNotFoundError(huge))) < 2 * ECHO_LIMIT
    errors = [{"field": huge, "message": huge}] * 50
    error = InvalidArgumentsError("tool", errors)
    assert len(error.errors) == 10
    assert len(str(error)) < 10 * 2 * MESSAGE_LIMIT + 100
    assert str(error).endswith("; and 40 more")
