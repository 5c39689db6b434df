"""Loads the journal's SQL: named queries and numbered migrations.

The SQL lives in ``sql/*.sql`` so it can be read and reviewed as SQL. Queries are
typed `LiteralString`: we ship these files and vouch for them as if they were
literals in the code, and pyright then rejects SQL assembled from runtime strings.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString, cast

_QUERY_HEADER = re.compile(r"^-- (\w+) --$", re.MULTILINE)


@cache
def queries() -> dict[str, LiteralString]:
    """Every named query in ``sql/queries.sql``, keyed by name."""
    text = (
        resources.files(__name__.rpartition(".")[0])
        .joinpath("sql/queries.sql")
        .read_text()
    )
    parts = _QUERY_HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    named = zip(parts[1::2], parts[2::2], strict=True)
    return {name: cast("LiteralString", body.strip()) for name, body in named}


@cache
def migrations() -> list[tuple[int, LiteralString]]:
    """``(version, script)`` for each ``sql/migrations/NNNN_*.sql``, in order."""
    folder = resources.files(__name__.rpartition(".")[0]).joinpath("sql/migrations")
    found: list[tuple[int, LiteralString]] = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, cast("LiteralString", entry.read_text())))
    found.sort()
    expected = list(range(1, len(found) + 1))
    if [v for v, _ in found] != expected:
        raise RuntimeError(f"migration files are not numbered 1..n: {found}")
    return found
