-- Schema version 2 of the PostgreSQL journal: `claim` also returns each
-- claimed task's creation time (the engine measures how long it queued).
--
-- A function's result columns cannot be changed in place, so it is dropped and
-- created again, in the migration's transaction: a claim running elsewhere
-- meanwhile still sees the old definition until this commits. Code of the
-- previous version names the columns it reads from `claim(...)`, so it keeps
-- working against this one. Its argument for being race-free is unchanged
-- (see 0001_initial.sql and spec-notes.md, "Claim and caps on PostgreSQL").
--
-- The load's "oldest queued task" needs no new index: it reads the client's
-- first queued task in `tasks_queued` (owner_id, seq) order, one index lookup.

DROP FUNCTION claim(text, double precision, integer, double precision);

CREATE FUNCTION claim(
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
        created_at := claimed.created_at;
        RETURN NEXT;
        p_limit := p_limit - 1;
    END LOOP;
END
$$;
