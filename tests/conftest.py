"""Shared fixtures: asyncio backend (aiosqlite is asyncio-only), hermetic env."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _scrub_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MCP_TASKS_"):
            monkeypatch.delenv(name)
