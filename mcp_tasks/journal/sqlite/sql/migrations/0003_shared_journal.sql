-- Schema version 3: the journal is the only state, shared by many processes.
--
-- `clients` holds one row per owner: the limits the engine enforces when it
-- claims work (concurrency) and accepts it (backlog), the round-robin turn
-- (`last_served`), and the owner's task counts per dispatch bucket. The counts
-- are maintained by the triggers below in the same transaction as every
-- change of a task's phase or status, from any code path, so they are always
-- the counts of the rows: a crash cannot leak a slot, and a claim can check a
-- cap with one indexed read instead of counting rows.
--
-- Buckets: queued (phase queued), running (phase running), parked (phase parked,
-- status working: waiting for a time), waiting (phase parked, status
-- input_required: waiting for an answer). Finished tasks are in no bucket.

-- The tasks table is rebuilt for one new state: a running task that was
-- cancelled keeps its phase (and lease) until its run has stopped, so it
-- still holds its client's slot while its body unwinds: `cancelled` is what
-- every client sees at once, `running` is what the caps count. Every other
-- pairing of phase and status is as before. Also new: the run's latest
-- report, and the text of a tool error result (so the older wire can show
-- `failed` with a message without loading the outcome).
CREATE TABLE tasks_v3 (
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
    retries INTEGER NOT NULL DEFAULT 0,
    progress REAL,
    progress_total REAL,
    tool_error TEXT,
    CHECK (
        (phase = 'queued' AND status = 'working')
        OR (phase = 'running' AND status IN ('working', 'cancelled'))
        OR (phase = 'parked' AND status IN ('working', 'input_required'))
        OR (phase = 'done' AND status IN ('completed', 'failed', 'cancelled'))
    )
);

INSERT INTO tasks_v3 (
    seq, task_id, owner_id, tool_name, arguments, status, status_message,
    created_at, updated_at, ttl_seconds, expires_at, poll_interval_seconds, listed,
    request_meta, phase, lease_holder, lease_expires_at, not_before, attempts,
    outcome, retries, tool_error
)
SELECT seq, task_id, owner_id, tool_name, arguments, status, status_message,
       created_at, updated_at, ttl_seconds, expires_at, poll_interval_seconds, listed,
       request_meta, phase, lease_holder, lease_expires_at, not_before, attempts,
       outcome, retries,
       CASE WHEN outcome IS NOT NULL AND json_extract(outcome, '$.result.isError') = 1
            THEN COALESCE(json_extract(outcome, '$.result.content[0].text'),
                          'The tool reported an error.')
       END
FROM tasks ORDER BY seq;

DROP TABLE tasks;
ALTER TABLE tasks_v3 RENAME TO tasks;

CREATE INDEX tasks_by_owner ON tasks (owner_id, seq) WHERE listed = 1;
CREATE INDEX tasks_expiry ON tasks (expires_at) WHERE phase = 'done';
CREATE INDEX tasks_queued ON tasks (owner_id, seq) WHERE phase = 'queued';
CREATE INDEX tasks_running ON tasks (lease_expires_at) WHERE phase = 'running';
CREATE INDEX tasks_parked ON tasks (not_before) WHERE phase = 'parked';
CREATE INDEX tasks_waiting ON tasks (owner_id, seq) WHERE status = 'input_required';

CREATE TABLE clients (
    owner_id TEXT PRIMARY KEY,
    concurrency INTEGER NOT NULL,
    backlog INTEGER NOT NULL,
    queued INTEGER NOT NULL DEFAULT 0,
    running INTEGER NOT NULL DEFAULT 0,
    parked INTEGER NOT NULL DEFAULT 0,
    waiting INTEGER NOT NULL DEFAULT 0,
    last_served INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- The clients a claim may serve, in round-robin order: one indexed read.
CREATE INDEX clients_ready ON clients (last_served, owner_id)
    WHERE queued > 0 AND running < concurrency;

-- The last round-robin turn handed out (one row).
CREATE TABLE dispatch_turn (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    turn INTEGER NOT NULL
);
INSERT INTO dispatch_turn (id, turn) VALUES (1, 0);

INSERT INTO clients (owner_id, concurrency, backlog, queued, running, parked, waiting)
SELECT owner_id, 4, 10000,
       sum(phase = 'queued'),
       sum(phase = 'running'),
       sum(phase = 'parked' AND status = 'working'),
       sum(phase = 'parked' AND status = 'input_required')
FROM tasks WHERE phase != 'done' GROUP BY owner_id;

CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks
WHEN new.phase != 'done'
BEGIN
    UPDATE clients SET
        queued = queued + (new.phase = 'queued'),
        running = running + (new.phase = 'running'),
        parked = parked + (new.phase = 'parked' AND new.status = 'working'),
        waiting = waiting + (new.phase = 'parked' AND new.status = 'input_required')
    WHERE owner_id = new.owner_id;
END;

CREATE TRIGGER tasks_count_update AFTER UPDATE OF phase, status ON tasks
WHEN old.phase != new.phase OR old.status != new.status
BEGIN
    UPDATE clients SET
        queued = queued - (old.phase = 'queued') + (new.phase = 'queued'),
        running = running - (old.phase = 'running') + (new.phase = 'running'),
        parked = parked
            - (old.phase = 'parked' AND old.status = 'working')
            + (new.phase = 'parked' AND new.status = 'working'),
        waiting = waiting
            - (old.phase = 'parked' AND old.status = 'input_required')
            + (new.phase = 'parked' AND new.status = 'input_required')
    WHERE owner_id = new.owner_id;
END;

CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks
WHEN old.phase != 'done'
BEGIN
    UPDATE clients SET
        queued = queued - (old.phase = 'queued'),
        running = running - (old.phase = 'running'),
        parked = parked - (old.phase = 'parked' AND old.status = 'working'),
        waiting = waiting - (old.phase = 'parked' AND old.status = 'input_required')
    WHERE owner_id = old.owner_id;
END;

-- The change feed: `task_events` becomes every change of every task, in commit
-- order. AUTOINCREMENT so a position is never reused after a purge, which a
-- follower that remembers the last position it saw relies on.
CREATE TABLE task_changes (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (
        kind IN ('status', 'phase', 'progress', 'log', 'answer')
    ),
    status TEXT NOT NULL,
    status_message TEXT,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT
);
INSERT INTO task_changes (position, task_id, owner_id, kind, status, status_message, reason, at)
SELECT e.event_id, e.task_id, COALESCE(t.owner_id, ''), 'status', e.status,
       e.status_message, e.reason, e.at
FROM task_events e LEFT JOIN tasks t ON t.task_id = e.task_id
ORDER BY e.event_id;
DROP TABLE task_events;
CREATE INDEX task_changes_by_task ON task_changes (task_id, position);
CREATE INDEX task_changes_transient ON task_changes (at) WHERE kind IN ('progress', 'log');

-- Shared rate-limit budgets: one token bucket per budget and dimension.
CREATE TABLE budgets (
    name TEXT NOT NULL,
    dimension TEXT NOT NULL,
    level REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (name, dimension)
) WITHOUT ROWID;

