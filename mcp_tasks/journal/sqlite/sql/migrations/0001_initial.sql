-- Schema version 1: tasks, the append-only transition journal, server metadata.
--
-- `status` is the wire status (the spec's five values). `phase` is the dispatch
-- state the engine needs besides it: `queued` (waiting for a worker), `running`
-- (held by a worker under a lease), `parked` (waiting for input or for a retry
-- time, holding no worker) and `done` (terminal). Times are seconds since the
-- epoch, UTC. `seq` gives FIFO order within a client and a stable list order.

CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL UNIQUE,
    owner_id TEXT NOT NULL,
    tool_name TEXT NOT NULL,
    arguments TEXT NOT NULL,
    status TEXT NOT NULL CHECK (
        status IN ('working', 'input_required', 'completed', 'failed', 'cancelled')
    ),
    status_message TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ttl_seconds REAL,
    expires_at REAL,
    poll_interval_seconds REAL NOT NULL,
    listed INTEGER NOT NULL DEFAULT 1,
    request_meta TEXT NOT NULL DEFAULT '{}',
    phase TEXT NOT NULL DEFAULT 'queued' CHECK (
        phase IN ('queued', 'running', 'parked', 'done')
    ),
    lease_holder TEXT,
    lease_expires_at REAL,
    not_before REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    outcome TEXT,
    CHECK ((phase = 'done') = (status IN ('completed', 'failed', 'cancelled')))
);

CREATE INDEX tasks_by_owner ON tasks (owner_id, seq) WHERE listed = 1;
CREATE INDEX tasks_unfinished ON tasks (phase, seq) WHERE phase != 'done';
CREATE INDEX tasks_expiry ON tasks (expires_at) WHERE phase = 'done';

CREATE TABLE task_events (
    event_id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    status TEXT NOT NULL,
    status_message TEXT,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);

CREATE INDEX task_events_by_task ON task_events (task_id, event_id);

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
