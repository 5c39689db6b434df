-- Schema version 1 of the PostgreSQL journal: the same tables as the SQLite
-- journal's version 3 (see mcp_tasks/journal/sqlite/sql/migrations), with
-- PostgreSQL types, the counts kept by plpgsql triggers, the fair claim as one
-- function, and a change feed whose order survives out-of-order commits.
-- Design and the argument for why it is race-free: spec-notes.md, section C
-- ("The PostgreSQL journal").

CREATE TABLE tasks (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id text NOT NULL UNIQUE,
    owner_id text NOT NULL,
    tool_name text NOT NULL,
    arguments text NOT NULL,
    status text NOT NULL CHECK (
        status IN ('working', 'input_required', 'completed', 'failed', 'cancelled')
    ),
    status_message text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    ttl_seconds double precision,
    expires_at double precision,
    poll_interval_seconds double precision NOT NULL,
    listed integer NOT NULL DEFAULT 1,
    request_meta text NOT NULL DEFAULT '{}',
    phase text NOT NULL DEFAULT 'queued' CHECK (
        phase IN ('queued', 'running', 'parked', 'done')
    ),
    lease_holder text,
    lease_expires_at double precision,
    not_before double precision,
    attempts integer NOT NULL DEFAULT 0,
    outcome text,
    retries integer NOT NULL DEFAULT 0,
    progress double precision,
    progress_total double precision,
    tool_error text,
    -- The feed key of the task's latest change (see `add_change`).
    feed_key xid8 NOT NULL DEFAULT pg_current_xact_id(),
    CHECK (
        (phase = 'queued' AND status = 'working')
        OR (phase = 'running' AND status IN ('working', 'cancelled'))
        OR (phase = 'parked' AND status IN ('working', 'input_required'))
        OR (phase = 'done' AND status IN ('completed', 'failed', 'cancelled'))
    )
);

CREATE INDEX tasks_by_owner ON tasks (owner_id, seq) WHERE listed = 1;
CREATE INDEX tasks_expiry ON tasks (expires_at) WHERE phase = 'done';
CREATE INDEX tasks_queued ON tasks (owner_id, seq) WHERE phase = 'queued';
CREATE INDEX tasks_running ON tasks (lease_expires_at) WHERE phase = 'running';
CREATE INDEX tasks_parked ON tasks (not_before) WHERE phase = 'parked';
CREATE INDEX tasks_waiting ON tasks (owner_id, seq) WHERE status = 'input_required';

CREATE TABLE clients (
    owner_id text PRIMARY KEY,
    concurrency integer NOT NULL,
    backlog integer NOT NULL,
    queued integer NOT NULL DEFAULT 0,
    running integer NOT NULL DEFAULT 0,
    parked integer NOT NULL DEFAULT 0,
    waiting integer NOT NULL DEFAULT 0,
    last_served bigint NOT NULL DEFAULT 0
);

CREATE INDEX clients_ready ON clients (last_served, owner_id)
    WHERE queued > 0 AND running < concurrency;

-- The round-robin turns handed out. A sequence, not a row: a turn is only an
-- order, gaps are harmless, and no claim waits for another to commit one.
CREATE SEQUENCE dispatch_turn CACHE 1;

-- Each client's counts are those of its rows: kept here, in the transaction
-- that changes a task's phase or status, from any code path. The UPDATE also
-- takes the client row's lock, which is what makes a cap exact (see `claim`).
CREATE FUNCTION count_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.phase <> 'done' THEN
        UPDATE clients SET
            queued = queued - (OLD.phase = 'queued')::int,
            running = running - (OLD.phase = 'running')::int,
            parked = parked - (OLD.phase = 'parked' AND OLD.status = 'working')::int,
            waiting = waiting
                - (OLD.phase = 'parked' AND OLD.status = 'input_required')::int
        WHERE owner_id = OLD.owner_id;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.phase <> 'done' THEN
        UPDATE clients SET
            queued = queued + (NEW.phase = 'queued')::int,
            running = running + (NEW.phase = 'running')::int,
            parked = parked + (NEW.phase = 'parked' AND NEW.status = 'working')::int,
            waiting = waiting
                + (NEW.phase = 'parked' AND NEW.status = 'input_required')::int
        WHERE owner_id = NEW.owner_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION count_tasks();
CREATE TRIGGER tasks_count_update AFTER UPDATE OF phase, status ON tasks
    FOR EACH ROW
    WHEN (OLD.phase IS DISTINCT FROM NEW.phase OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION count_tasks();
CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION count_tasks();

-- The change feed. Followers read it in (feed_key, position) order and only
-- below the oldest running transaction id (the "horizon"), so a change that
-- commits late is never skipped: see `add_change`.
CREATE TABLE task_changes (
    feed_key xid8 NOT NULL,
    position bigint GENERATED ALWAYS AS IDENTITY (CACHE 1),
    task_id text NOT NULL,
    owner_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('status', 'phase', 'progress', 'log', 'answer')),
    status text NOT NULL,
    status_message text,
    reason text NOT NULL,
    at double precision NOT NULL,
    data text,
    PRIMARY KEY (feed_key, position)
);
CREATE INDEX task_changes_by_task ON task_changes (task_id, position);
CREATE INDEX task_changes_transient ON task_changes (at) WHERE kind IN ('progress', 'log');

-- Record one change of a task, in the transaction that makes it.
--
-- Its feed key is max(this transaction's id, the task's previous key), taken
-- under the task row's lock (the UPDATE below), and its position comes from
-- the sequence after that lock is held. So:
--   * a change that is not visible yet has a key >= the oldest running
--     transaction id (its writer is running, and the key is at least the
--     writer's id): everything below that horizon is final;
--   * one task's changes are ordered by (key, position) as they committed:
--     a later writer of the task locked it after the earlier one committed,
--     so its key is not smaller and its position is larger.
-- No NOTIFY here: a notifying transaction holds PostgreSQL's global
-- notification lock through its commit, which serialises every such commit
-- (measured: about half the throughput). The process that committed sends the
-- wake-up afterwards, coalesced (see the journal's `_notifier`).
CREATE FUNCTION add_change(
    p_task_id text, p_owner_id text, p_kind text, p_status text,
    p_message text, p_reason text, p_at double precision, p_data text
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    key xid8;
BEGIN
    UPDATE tasks SET feed_key = greatest(feed_key, pg_current_xact_id())
    WHERE task_id = p_task_id
    RETURNING feed_key INTO key;
    IF NOT FOUND THEN
        key := pg_current_xact_id();
    END IF;
    INSERT INTO task_changes (feed_key, task_id, owner_id, kind, status,
                              status_message, reason, at, data)
    VALUES (key, p_task_id, p_owner_id, p_kind, p_status, p_message, p_reason,
            p_at, p_data);
END
$$;

-- Claim up to p_limit queued tasks, fairly, in the caller's transaction.
--
-- Each pick locks the ready client served longest ago (FOR UPDATE SKIP
-- LOCKED: a client another claim is serving is passed over, never waited
-- for). Under that lock its `running < concurrency` is re-checked against the
-- latest committed row (PostgreSQL re-evaluates a locked row's condition), and
-- the claim's own UPDATE of the task raises `running` (trigger) before the
-- lock is released at commit: no other transaction can count the same free
-- slot. The task is its oldest queued one not locked by another writer.
CREATE FUNCTION claim(
    p_holder text, p_expires double precision, p_limit integer, p_at double precision
) RETURNS TABLE (
    task_id text, owner_id text, tool_name text, arguments text,
    request_meta text, attempts integer, retries integer
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    client text;
    tried text[] := '{}';
    claimed tasks%ROWTYPE;
BEGIN
    LOOP
        EXIT WHEN p_limit <= 0;
        SELECT c.owner_id INTO client FROM clients c
        WHERE c.queued > 0 AND c.running < c.concurrency
          AND c.owner_id <> ALL (tried)
        ORDER BY c.last_served, c.owner_id
        LIMIT 1 FOR UPDATE SKIP LOCKED;
        EXIT WHEN NOT FOUND;
        UPDATE tasks t SET phase = 'running', lease_holder = p_holder,
               lease_expires_at = p_expires, attempts = t.attempts + 1,
               updated_at = p_at
        WHERE t.seq = (
            SELECT q.seq FROM tasks q
            WHERE q.owner_id = client AND q.phase = 'queued'
            ORDER BY q.seq LIMIT 1 FOR UPDATE SKIP LOCKED
        )
        RETURNING t.* INTO claimed;
        IF NOT FOUND THEN
            -- Its queued tasks are all being changed by other writers: serve
            -- another client now; this one is found again at the next claim.
            tried := tried || client;
            CONTINUE;
        END IF;
        UPDATE clients SET last_served = nextval('dispatch_turn')
        WHERE clients.owner_id = client;
        PERFORM add_change(
            claimed.task_id, claimed.owner_id, 'phase', 'working',
            claimed.status_message, 'claimed',
            p_at, json_build_object('holder', p_holder, 'attempt', claimed.attempts)::text
        );
        task_id := claimed.task_id;
        owner_id := claimed.owner_id;
        tool_name := claimed.tool_name;
        arguments := claimed.arguments;
        request_meta := claimed.request_meta;
        attempts := claimed.attempts;
        retries := claimed.retries;
        RETURN NEXT;
        p_limit := p_limit - 1;
    END LOOP;
END
$$;

-- Submit one task: the client's row (created, or its limits refreshed) is
-- locked by the upsert, so the backlog check and the insert are exact across
-- processes. Returns false, storing nothing, when the backlog is full.
CREATE FUNCTION submit_task(
    p_task_id text, p_owner_id text, p_tool_name text, p_arguments text,
    p_message text, p_created_at double precision, p_updated_at double precision,
    p_ttl double precision,
    p_expires_at double precision, p_poll double precision, p_listed integer,
    p_request_meta text, p_concurrency integer, p_backlog integer
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    unfinished integer;
BEGIN
    INSERT INTO clients AS c (owner_id, concurrency, backlog)
    VALUES (p_owner_id, p_concurrency, p_backlog)
    ON CONFLICT (owner_id) DO UPDATE SET
        concurrency = excluded.concurrency, backlog = excluded.backlog
    RETURNING c.queued + c.running + c.parked + c.waiting INTO unfinished;
    IF unfinished >= p_backlog THEN
        RETURN false;
    END IF;
    INSERT INTO tasks (
        task_id, owner_id, tool_name, arguments, status, status_message,
        created_at, updated_at, ttl_seconds, expires_at, poll_interval_seconds,
        listed, request_meta, phase
    ) VALUES (
        p_task_id, p_owner_id, p_tool_name, p_arguments, 'working', p_message,
        p_created_at, p_updated_at, p_ttl, p_expires_at, p_poll, p_listed,
        p_request_meta, 'queued'
    );
    PERFORM add_change(p_task_id, p_owner_id, 'status', 'working', p_message,
                       'submitted', p_created_at, NULL);
    RETURN true;
END
$$;

-- End a running task completed or failed under its lease, and record the
-- change: one statement for the engine's most frequent write. No row (and
-- nothing changed) when the lease is not current.
CREATE FUNCTION finish_task(
    p_status text, p_message text, p_at double precision, p_outcome text,
    p_tool_error text, p_keep_until double precision, p_task_id text,
    p_holder text, p_attempt integer, p_reason text
) RETURNS SETOF tasks LANGUAGE plpgsql AS $$
DECLARE
    ended tasks%ROWTYPE;
BEGIN
    UPDATE tasks SET status = p_status, status_message = p_message,
           updated_at = p_at, phase = 'done', outcome = p_outcome,
           tool_error = p_tool_error, lease_holder = NULL,
           lease_expires_at = NULL, not_before = NULL,
           ttl_seconds = CASE WHEN ttl_seconds IS NULL THEN NULL
                              ELSE greatest(ttl_seconds, p_keep_until - created_at) END,
           expires_at = CASE WHEN ttl_seconds IS NULL THEN NULL
                             ELSE created_at + greatest(ttl_seconds, p_keep_until - created_at) END
    WHERE task_id = p_task_id AND phase = 'running' AND lease_holder = p_holder
      AND attempts = p_attempt AND status = 'working'
    RETURNING * INTO ended;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM add_change(p_task_id, ended.owner_id, 'status', p_status, p_message,
                       p_reason, p_at, NULL);
    RETURN NEXT ended;
END
$$;

-- Shared rate-limit budgets: one token bucket per budget and dimension.
CREATE TABLE budgets (
    name text NOT NULL,
    dimension text NOT NULL,
    level double precision NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (name, dimension)
);

CREATE TABLE steps (
    task_id text NOT NULL,
    step_key text NOT NULL,
    result text NOT NULL,
    recorded_at double precision NOT NULL,
    PRIMARY KEY (task_id, step_key)
);

CREATE TABLE input_requests (
    task_id text NOT NULL,
    request_key text NOT NULL,
    method text NOT NULL,
    params text NOT NULL,
    response text,
    created_at double precision NOT NULL,
    answered_at double precision,
    expires_at double precision,
    PRIMARY KEY (task_id, request_key)
);

CREATE INDEX input_requests_open ON input_requests (expires_at)
    WHERE response IS NULL AND expires_at IS NOT NULL;

CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
