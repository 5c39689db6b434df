"""Loads a journal backend's SQL: named queries and numbered migrations.

Each backend keeps its SQL in ``sql/queries.sql`` and ``sql/migrations/NNNN_*.sql``
inside its own package, so it can be read and reviewed as SQL. Queries are typed
`LiteralString`: we ship these files and vouch for them as if they were literals
in the code, and pyright then rejects SQL assembled from runtime strings.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString, cast

_QUERY_HEADER = re.compile(r"^-- (\w+) --$", re.MULTILINE)


@cache
def queries(package: str) -> dict[str, LiteralString]:
    """Every named query in ``package``'s ``sql/queries.sql``, keyed by name."""
    text = resources.files(package).joinpath("sql/queries.sql").read_text()
    parts = _QUERY_HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    named = zip(parts[1::2], parts[2::2], strict=True)
    return {name: cast("LiteralString", body.strip()) for name, body in named}


@cache
def migrations(package: str) -> list[tuple[int, LiteralString]]:
    """``(version, script)`` for each of ``package``'s migrations, in order."""
    folder = resources.files(package).joinpath("sql/migrations")
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
