-- Schema version 4 of the PostgreSQL journal: submitting, claiming and
-- finishing a task write one new version of its row each, not two.
--
-- Until now each of them changed the task row and then called `add_change`,
-- which updated the same row again (its `feed_key`) before inserting the
-- change: six row versions per task run, half of them only to move the key.
-- Now the statement that changes the task sets the key itself, and the change
-- row is inserted with it (`record_change`): about a third less WAL per task
-- and three fewer statements inside the functions (benchmarks/RESULTS.md,
-- "PostgreSQL: fewer writes per task").
--
-- The feed's argument is unchanged (0001_initial.sql, `add_change`): the key
-- is max(this transaction's id, the task's previous key), computed by the
-- UPDATE that holds the task row's lock (an UPDATE's SET is evaluated on the
-- row's latest version once locked), and the position is drawn after that.
-- A submit inserts the row in this transaction, so its key is this
-- transaction's id, as `add_change` would have found. `add_change` stays for
-- every other change. The claim's argument for exact caps is unchanged too:
-- only where the key is set moved.
--
-- Result types are unchanged, so `CREATE OR REPLACE` suffices (in the
-- migration's transaction: a call running elsewhere meanwhile keeps the
-- previous definition until this commits).

-- Insert one change whose key the caller has already set on the task row
-- (under its lock, in this transaction).
CREATE FUNCTION record_change(
    p_key xid8, p_task_id text, p_owner_id text, p_kind text, p_status text,
    p_message text, p_reason text, p_at double precision, p_data text
) RETURNS void LANGUAGE sql AS $$
    INSERT INTO task_changes (feed_key, task_id, owner_id, kind, status,
                              status_message, reason, at, data)
    VALUES (p_key, p_task_id, p_owner_id, p_kind, p_status, p_message, p_reason,
            p_at, p_data);
$$;

CREATE OR REPLACE FUNCTION claim(
    p_holder text, p_expires double precision, p_limit integer, p_at double precision
) RETURNS TABLE (
    task_id text, owner_id text, tool_name text, arguments text,
    request_meta text, attempts integer, retries integer, created_at double precision
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
               updated_at = p_at,
               feed_key = greatest(t.feed_key, pg_current_xact_id())
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
        PERFORM record_change(
            claimed.feed_key, claimed.task_id, claimed.owner_id, 'phase', 'working',
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
        created_at := claimed.created_at;
        RETURN NEXT;
        p_limit := p_limit - 1;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION submit_task(
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
        listed, request_meta, phase, feed_key
    ) VALUES (
        p_task_id, p_owner_id, p_tool_name, p_arguments, 'working', p_message,
        p_created_at, p_updated_at, p_ttl, p_expires_at, p_poll, p_listed,
        p_request_meta, 'queued', pg_current_xact_id()
    );
    PERFORM record_change(pg_current_xact_id(), p_task_id, p_owner_id, 'status',
                          'working', p_message, 'submitted', p_created_at, NULL);
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION finish_task(
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
                             ELSE created_at + greatest(ttl_seconds, p_keep_until - created_at) END,
           feed_key = greatest(feed_key, pg_current_xact_id())
    WHERE task_id = p_task_id AND phase = 'running' AND lease_holder = p_holder
      AND attempts = p_attempt AND status = 'working'
    RETURNING * INTO ended;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM record_change(ended.feed_key, p_task_id, ended.owner_id, 'status',
                          p_status, p_message, p_reason, p_at, NULL);
    RETURN NEXT ended;
END
$$;

-- Group commit in one statement (mcp_tasks/journal/postgres/_group_commit.py):
-- the writes that arrived together, as arrays, one element per write, run in
-- (owner, order given) order: the lock order on the clients' counters rows
-- that keeps two processes' groups from deadlocking. Each element is the
-- single-write function's call, with its own checks (backlog, fence); `i`
-- is the element's 1-based index in the arrays. Should any write fail, the
-- whole statement does, and the caller runs the group's writes one by one.
CREATE FUNCTION submit_tasks(
    p_task_id text[], p_owner_id text[], p_tool_name text[], p_arguments text[],
    p_message text[], p_created_at double precision[],
    p_updated_at double precision[], p_ttl double precision[],
    p_expires_at double precision[], p_poll double precision[], p_listed integer[],
    p_request_meta text[], p_concurrency integer[], p_backlog integer[]
) RETURNS TABLE (i bigint, submitted boolean) LANGUAGE plpgsql AS $$
DECLARE
    w record;
BEGIN
    FOR w IN
        SELECT * FROM unnest(
            p_task_id, p_owner_id, p_tool_name, p_arguments, p_message,
            p_created_at, p_updated_at, p_ttl, p_expires_at, p_poll, p_listed,
            p_request_meta, p_concurrency, p_backlog
        ) WITH ORDINALITY AS u (
            task_id, owner_id, tool_name, arguments, message, created_at,
            updated_at, ttl, expires_at, poll, listed, request_meta,
            concurrency, backlog, n
        )
        ORDER BY u.owner_id, u.n
    LOOP
        i := w.n;
        submitted := submit_task(
            w.task_id, w.owner_id, w.tool_name, w.arguments, w.message,
            w.created_at, w.updated_at, w.ttl, w.expires_at, w.poll, w.listed,
            w.request_meta, w.concurrency, w.backlog
        );
        RETURN NEXT;
    END LOOP;
END
$$;

-- The owner of each finish is looked up first (unlocked: a task's owner never
-- changes); `finish_task` then locks the task's row and its client's row.
-- A finish whose fence does not hold returns no row for its `i`.
CREATE FUNCTION finish_tasks(
    p_status text[], p_message text[], p_at double precision[], p_outcome text[],
    p_tool_error text[], p_keep_until double precision[], p_task_id text[],
    p_holder text[], p_attempt integer[], p_reason text[]
) RETURNS TABLE (i bigint, ended tasks) LANGUAGE plpgsql AS $$
DECLARE
    w record;
BEGIN
    FOR w IN
        SELECT u.*, (SELECT t.owner_id FROM tasks t WHERE t.task_id = u.task_id) AS owner
        FROM unnest(
            p_status, p_message, p_at, p_outcome, p_tool_error, p_keep_until,
            p_task_id, p_holder, p_attempt, p_reason
        ) WITH ORDINALITY AS u (
            status, message, at, outcome, tool_error, keep_until, task_id,
            holder, attempt, reason, n
        )
        ORDER BY owner, u.task_id
    LOOP
        FOR ended IN
            SELECT * FROM finish_task(
                w.status, w.message, w.at, w.outcome, w.tool_error, w.keep_until,
                w.task_id, w.holder, w.attempt, w.reason
            )
        LOOP
            i := w.n;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;
