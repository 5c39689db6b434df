"""`Metrics.exposition` in process: the journal's gauges, read at each scrape.

The end-to-end tests scrape real servers; here the clock is fixed, so the
values are exact: a second journal on the same file (another process) changes
what the first one's metrics say.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mcp_tasks import OwnerId, Settings, TaskId
from mcp_tasks._budgets import BudgetLimits
from mcp_tasks.engine import TaskRuntime
from mcp_tasks.journal import NewTask, open_journal
from mcp_tasks.ops import Metrics

T0 = 1_700_000_000.0
API = BudgetLimits(requests_per_minute=60, tokens_per_minute=6000)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def queued(owner: str, task_id: str, created_at: float) -> NewTask:
    return NewTask(
        task_id=TaskId(task_id),
        owner_id=OwnerId(owner),
        tool_name="noop",
        arguments={},
        created_at=created_at,
        ttl_seconds=None,
        poll_interval_seconds=1.0,
        concurrency=4,
        backlog=100,
    )


async def test_a_scrape_reads_queues_ages_and_budgets_from_the_journal(
    tmp_path: Path,
) -> None:
    db = tmp_path / "t.db"
    settings = Settings(synchronous="NORMAL", budgets={"api": API})
    async with open_journal(db) as journal, open_journal(db) as other:
        metrics = Metrics(TaskRuntime(journal, settings, {}, clock=lambda: T0))
        before = samples((await metrics.exposition()).decode())
        assert ("mcp_tasks_queued", frozenset({("client", "alice")})) not in before
        budget = {("budget", "api"), ("dimension", "requests")}
        assert before[("mcp_tasks_budget_left", frozenset(budget))] == 60
        # Another process submits and spends: this one's next scrape shows it.
        await other.submit(queued("alice", "t-1", T0 - 30))
        await other.submit(queued("alice", "t-2", T0 - 10))
        await other.take_budget("api", API, 45, 1000, T0)
        after = samples((await metrics.exposition()).decode())
    alice = frozenset({("client", "alice")})
    assert after[("mcp_tasks_queued", alice)] == 2
    assert after[("mcp_tasks_running", alice)] == 0
    assert after[("mcp_tasks_oldest_queued_age_seconds", alice)] == 30
    assert after[("mcp_tasks_budget_left", frozenset(budget))] == 15
    tokens = frozenset({("budget", "api"), ("dimension", "tokens")})
    assert after[("mcp_tasks_budget_left", tokens)] == 5000
    assert after[("mcp_tasks_workers_limit", frozenset())] == settings.workers
