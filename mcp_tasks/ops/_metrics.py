"""Prometheus metrics of one server process, exposed at ``GET /metrics``.

Two kinds, as Prometheus expects:

- **Gauges of the whole deployment, read from the journal at scrape time**:
  each client's queued, running, parked and input-required tasks and the age
  of its oldest queued task. Every process on one journal reports the same
  values (scrape any one of them; aggregate with ``max``, not ``sum``). One
  cheap journal read per scrape (`Journal.load`: counts kept in the clients
  table, the oldest queued task by index), whatever the queue's length; and
  what each configured shared budget could give now (`Journal.budget_left`).
- **What this process did**: tasks ended here by client, tool and status;
  queue wait (submit to first start) and run time of the runs it started;
  its journal commits (seconds and writes per commit); its workers busy and
  their limit. Each process exposes its own; sum them across processes.

Uses ``prometheus-client`` with a registry per server (no global state), and
its standard process collector (CPU, memory, open files).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import anyio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mcp_tasks.engine import RuntimeStatistics, TaskRuntime
from mcp_tasks.journal import ClientLoad

#: The text exposition format's content type.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
PREFIX: Final = "mcp_tasks"

#: Waits in a queue: from milliseconds (an idle server) to hours (a backlog).
_WAIT_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900,
    3600, 14400,
)  # fmt: skip
#: Tool runs: from a no-op to a long job.
_RUN_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600,
)  # fmt: skip
#: Commits: an fsync takes about a millisecond; a contended file much longer.
_COMMIT_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
)  # fmt: skip
#: Writes per commit: 1 when idle, up to the writer's batch limit under load.
_BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What one scrape read: the journal's clients and this process's pool."""

    loads: Sequence[ClientLoad]
    statistics: RuntimeStatistics
    now: float
    #: budget -> dimension -> what it could give now.
    budgets: Mapping[str, Mapping[str, float]]


class _JournalGauges(Collector):
    """Yields the gauges of the snapshot `Metrics.exposition` just read."""

    def __init__(self) -> None:
        self.snapshot: _Snapshot | None = None

    def describe(self) -> Iterable[Metric]:
        # No samples at registration: the registry learns the names anyway.
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self.snapshot))

    def _families(self, snapshot: _Snapshot | None) -> Iterable[Metric]:
        per_client = {
            "queued": "Tasks waiting for a worker, per client (all processes)",
            "running": "Tasks running, per client (all processes)",
            "parked": "Tasks waiting for a time (a retry, a budget), per client",
            "input_required": "Tasks waiting for an answer, per client",
        }
        loads = snapshot.loads if snapshot is not None else ()
        for name, documentation in per_client.items():
            family = GaugeMetricFamily(
                f"{PREFIX}_{name}", documentation, labels=["client"]
            )
            for load in loads:
                count = (
                    load.waiting if name == "input_required" else getattr(load, name)
                )
                family.add_metric([load.owner_id], count)
            yield family
        age = GaugeMetricFamily(
            f"{PREFIX}_oldest_queued_age_seconds",
            "Age of the client's oldest queued task (0 when none is queued)",
            labels=["client"],
        )
        for load in loads:
            waited = 0.0
            if snapshot is not None and load.oldest_queued_at is not None:
                waited = max(0.0, snapshot.now - load.oldest_queued_at)
            age.add_metric([load.owner_id], waited)
        yield age
        busy = GaugeMetricFamily(
            f"{PREFIX}_workers_busy", "This process's workers running a task"
        )
        limit = GaugeMetricFamily(
            f"{PREFIX}_workers_limit", "This process's worker limit"
        )
        if snapshot is not None:
            busy.add_metric([], snapshot.statistics.running)
            limit.add_metric([], snapshot.statistics.workers)
        yield busy
        yield limit
        left = GaugeMetricFamily(
            f"{PREFIX}_budget_left",
            "What each shared budget could give now (all processes)",
            labels=["budget", "dimension"],
        )
        budgets: Mapping[str, Mapping[str, float]] = (
            snapshot.budgets if snapshot is not None else {}
        )
        for name, dimensions in budgets.items():
            for dimension, level in dimensions.items():
                left.add_metric([name, dimension], level)
        yield left


class Metrics:
    """The metrics of one server process over ``runtime``; see the module docstring."""

    def __init__(self, runtime: TaskRuntime) -> None:
        self.runtime = runtime
        self.registry = CollectorRegistry()
        self._gauges = _JournalGauges()
        self.registry.register(self._gauges)
        ProcessCollector(registry=self.registry)
        self.finished = Counter(
            f"{PREFIX}_finished",
            "Tasks that ended through this process, by client, tool and status",
            ["client", "tool", "status"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Submit to first start of the runs this process started",
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            f"{PREFIX}_run_seconds",
            "How long the last attempt ran, of tasks this process finished",
            ["tool"],
            buckets=_RUN_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            f"{PREFIX}_journal_commit_seconds",
            "This process's journal commits: seconds each (lock wait included)",
            buckets=_COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.commit_writes = Histogram(
            f"{PREFIX}_journal_commit_writes",
            "This process's journal commits: writes each (group commit)",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.direct_answers = Counter(
            f"{PREFIX}_http_direct_answers",
            "Requests this process answered without the SDK's dispatch, by method",
            ["method"],
            registry=self.registry,
        )
        self._direct_children: dict[str, Counter] = {}
        self._scrape = anyio.Lock()
        runtime.observe(self)
        runtime.journal.observe_commits(self.commit)

    # The engine's observer (see mcp_tasks.engine._observer).

    def run_started(self, tool: str, queue_wait_seconds: float | None) -> None:
        """Observe the queue wait of a first attempt."""
        if queue_wait_seconds is not None:
            self.queue_wait.observe(queue_wait_seconds)

    def task_ended(
        self, owner_id: str, tool: str, status: str, run_seconds: float | None
    ) -> None:
        """Count an ended task; observe its run time if it ran here."""
        self.finished.labels(owner_id, tool, status).inc()
        if run_seconds is not None:
            self.run_seconds.labels(tool).observe(run_seconds)

    def commit(self, seconds: float, writes: int) -> None:
        """Observe one journal commit of this process."""
        self.commit_seconds.observe(seconds)
        self.commit_writes.observe(writes)

    def direct_answered(self, method: str) -> None:
        """Count a request answered without the SDK's dispatch (HTTP)."""
        child = self._direct_children.get(method)
        if child is None:  # a handful of methods: each child is made once
            child = self._direct_children[method] = self.direct_answers.labels(method)
        child.inc()

    async def exposition(self) -> bytes:
        """Read the journal's gauges now and render every metric (text format).

        Raises:
            JournalError: the journal cannot be read.
        """
        async with self._scrape:
            now = self.runtime.now()
            loads = await self.runtime.load()
            budgets = {
                name: await self.runtime.journal.budget_left(name, limits, now)
                for name, limits in self.runtime.settings.budgets.items()
            }
            self._gauges.snapshot = _Snapshot(
                loads, self.runtime.statistics(), now, budgets
            )
            try:
                return generate_latest(self.registry)
            finally:
                self._gauges.snapshot = None
