-- Named queries of the PostgreSQL journal (psycopg placeholders), mostly the
-- SQLite journal's. Each block is `-- name --` followed by one statement.
-- Statements that a run makes are fenced by its lease: they match the row
-- only while `phase = 'running'` under the same holder and attempt, and,
-- except `renew_lease` and `stopped`, only while the task is still `working`
-- (not cancelled). The functions they call (`submit_task`, `claim`,
-- `finish_task`, `add_change`) are defined by the migrations, with the
-- argument for why they are race-free.

-- submit_task --
SELECT submit_task(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)

-- submit_group --
SELECT i, submitted FROM submit_tasks(
    %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::float8[],
    %s::float8[], %s::float8[], %s::float8[], %s::float8[], %s::integer[],
    %s::text[], %s::integer[], %s::integer[])

-- insert_change --
SELECT add_change(%s, %s, %s, %s, %s, %s, %s, %s)

-- get_task --
SELECT t.task_id, t.owner_id, t.tool_name, t.status, t.status_message, t.created_at,
       t.updated_at, t.ttl_seconds, t.poll_interval_seconds, t.listed, t.tool_error,
       t.progress, t.progress_total,
       CASE WHEN t.phase = 'queued' THEN (
           SELECT count(*) FROM tasks q
           WHERE q.owner_id = t.owner_id AND q.phase = 'queued' AND q.seq < t.seq
       ) END,
       CASE WHEN %s::boolean THEN t.outcome END,
       CASE WHEN t.phase = 'queued' THEN (
           SELECT c.concurrency FROM clients c
           WHERE c.owner_id = t.owner_id AND c.running >= c.concurrency
       ) END
FROM tasks t WHERE t.task_id = %s

-- list_owned --
SELECT seq, task_id, owner_id, tool_name, status, status_message, created_at,
       updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
       progress, progress_total, phase = 'queued'
FROM tasks WHERE owner_id = %s AND listed = 1 AND seq > %s
ORDER BY seq LIMIT %s

-- client_limit_if_full --
SELECT concurrency FROM clients WHERE owner_id = %s AND running >= concurrency

-- queued_ahead --
SELECT count(*) FROM tasks WHERE owner_id = %s AND phase = 'queued' AND seq < %s

-- request_meta_of --
SELECT request_meta FROM tasks WHERE task_id = %s

-- changes_of --
SELECT kind, status, status_message, reason, at, data FROM task_changes
WHERE task_id = %s ORDER BY position

-- steps_of --
SELECT step_key, result FROM steps WHERE task_id = %s

-- input_requests_of --
SELECT request_key, method, params, response, expires_at FROM input_requests
WHERE task_id = %s ORDER BY created_at, request_key

-- awaiting_input --
SELECT task_id FROM tasks
WHERE owner_id = %s AND status = 'input_required' ORDER BY seq LIMIT %s

-- load_all --
-- The oldest queued task is the first in the client's queue (seq order: tasks
-- are numbered as they are created), one lookup in `tasks_queued` rather than
-- a scan of every queued task: scraped metrics read this with 100,000 queued.
SELECT c.owner_id, c.queued, c.running, c.parked, c.waiting, c.concurrency, c.backlog,
       (SELECT q.created_at FROM tasks q
        WHERE q.owner_id = c.owner_id AND q.phase = 'queued' ORDER BY q.seq LIMIT 1)
FROM clients c WHERE c.queued + c.running + c.parked + c.waiting > 0
ORDER BY c.owner_id

-- load_one --
SELECT c.owner_id, c.queued, c.running, c.parked, c.waiting, c.concurrency, c.backlog,
       (SELECT q.created_at FROM tasks q
        WHERE q.owner_id = c.owner_id AND q.phase = 'queued' ORDER BY q.seq LIMIT 1)
FROM clients c WHERE c.owner_id = %s

-- claim --
SELECT task_id, owner_id, tool_name, arguments, request_meta, attempts, retries,
       created_at
FROM claim(%s, %s, %s, %s)

-- claimable --
SELECT 1 FROM clients WHERE queued > 0 AND running < concurrency LIMIT 1

-- renew_lease --
UPDATE tasks SET lease_expires_at = %s
WHERE task_id = %s AND phase = 'running' AND lease_holder = %s AND attempts = %s
RETURNING status

-- stopped --
UPDATE tasks SET phase = 'done', lease_holder = NULL, lease_expires_at = NULL
WHERE task_id = %s AND phase = 'running' AND lease_holder = %s AND attempts = %s
  AND status = 'cancelled'
RETURNING owner_id

-- finish --
SELECT task_id, owner_id, tool_name, status, status_message, created_at,
       updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
       progress, progress_total, NULL
FROM finish_task(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)

-- finish_group --
SELECT f.i, (f.ended).task_id, (f.ended).owner_id, (f.ended).tool_name,
       (f.ended).status, (f.ended).status_message, (f.ended).created_at,
       (f.ended).updated_at, (f.ended).ttl_seconds, (f.ended).poll_interval_seconds,
       (f.ended).listed, (f.ended).tool_error, (f.ended).progress,
       (f.ended).progress_total, NULL
FROM finish_tasks(
    %s::text[], %s::text[], %s::float8[], %s::text[], %s::text[], %s::float8[],
    %s::text[], %s::text[], %s::integer[], %s::text[]) f

-- cancel --
UPDATE tasks SET status = 'cancelled', status_message = %s, updated_at = %s,
       phase = CASE WHEN phase = 'running' THEN 'running' ELSE 'done' END,
       not_before = NULL,
       ttl_seconds = CASE WHEN ttl_seconds IS NULL THEN NULL
                          ELSE greatest(ttl_seconds, %s - created_at) END,
       expires_at = CASE WHEN ttl_seconds IS NULL THEN NULL
                         ELSE created_at + greatest(ttl_seconds, %s - created_at) END
WHERE task_id = %s AND status IN ('working', 'input_required')
RETURNING task_id, owner_id, tool_name, status, status_message, created_at,
          updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
          progress, progress_total, NULL

-- fail_orphan --
UPDATE tasks SET status = 'failed', status_message = %s, updated_at = %s, phase = 'done',
       outcome = %s, lease_holder = NULL, lease_expires_at = NULL, not_before = NULL,
       ttl_seconds = CASE WHEN ttl_seconds IS NULL THEN NULL
                          ELSE greatest(ttl_seconds, %s - created_at) END,
       expires_at = CASE WHEN ttl_seconds IS NULL THEN NULL
                         ELSE created_at + greatest(ttl_seconds, %s - created_at) END
WHERE task_id = %s AND phase = 'running' AND lease_holder = %s AND attempts = %s
  AND status = 'working'
RETURNING task_id, owner_id, tool_name, status, status_message, created_at,
          updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
          progress, progress_total, NULL

-- park --
UPDATE tasks SET phase = 'parked', lease_holder = NULL, lease_expires_at = NULL,
       not_before = %s, status_message = %s, updated_at = %s, retries = retries + %s
WHERE task_id = %s AND phase = 'running' AND lease_holder = %s AND attempts = %s
  AND status = 'working'
RETURNING owner_id

-- ask --
UPDATE tasks SET status = 'input_required', phase = 'parked', lease_holder = NULL,
       lease_expires_at = NULL, not_before = NULL, status_message = %s, updated_at = %s
WHERE task_id = %s AND phase = 'running' AND lease_holder = %s AND attempts = %s
  AND status = 'working'
RETURNING task_id, owner_id, tool_name, status, status_message, created_at,
          updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
          progress, progress_total, NULL

-- requeue_running --
UPDATE tasks SET phase = 'queued', lease_holder = NULL, lease_expires_at = NULL,
       status_message = %s, updated_at = %s
WHERE task_id = %s AND phase = 'running' AND lease_holder = %s AND attempts = %s
  AND status = 'working'
RETURNING owner_id

-- report --
UPDATE tasks SET status_message = COALESCE(%s, status_message),
       progress = COALESCE(%s, progress), progress_total = COALESCE(%s, progress_total),
       updated_at = %s
WHERE task_id = %s AND phase = 'running' AND lease_holder = %s AND attempts = %s
  AND status = 'working'
RETURNING owner_id, status_message

-- owner_of --
SELECT owner_id FROM tasks WHERE task_id = %s FOR UPDATE

-- lease_owner --
SELECT owner_id FROM tasks
WHERE task_id = %s AND phase = 'running' AND lease_holder = %s AND attempts = %s
  AND status = 'working'
FOR UPDATE

-- record_step --
INSERT INTO steps (task_id, step_key, result, recorded_at) VALUES (%s, %s, %s, %s)
ON CONFLICT (task_id, step_key) DO NOTHING

-- forget_steps --
DELETE FROM steps WHERE task_id = %s

-- add_input_request --
INSERT INTO input_requests (task_id, request_key, method, params, created_at, expires_at)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (task_id, request_key) DO NOTHING

-- answer_input_request --
UPDATE input_requests SET response = %s, answered_at = %s
WHERE task_id = %s AND request_key = %s AND response IS NULL
RETURNING request_key

-- open_input_count --
SELECT count(*) FROM input_requests WHERE task_id = %s AND response IS NULL

-- resume --
UPDATE tasks SET status = 'working', phase = 'queued', status_message = %s, updated_at = %s
WHERE task_id = %s AND status = 'input_required'
RETURNING task_id, owner_id, tool_name, status, status_message, created_at,
          updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
          progress, progress_total, NULL

-- due_questions --
SELECT i.task_id, i.request_key FROM input_requests i
JOIN tasks t ON t.task_id = i.task_id
WHERE i.response IS NULL AND i.expires_at IS NOT NULL AND i.expires_at <= %s
  AND t.status = 'input_required'
ORDER BY i.task_id, i.expires_at

-- wake_due --
UPDATE tasks SET phase = 'queued', not_before = NULL, updated_at = %s
WHERE seq IN (
    SELECT seq FROM tasks
    WHERE phase = 'parked' AND status = 'working' AND not_before <= %s
    ORDER BY seq FOR UPDATE SKIP LOCKED
)
RETURNING task_id, owner_id, status_message

-- next_wake --
SELECT min(not_before) FROM tasks WHERE phase = 'parked' AND status = 'working'

-- next_question_deadline --
SELECT min(i.expires_at) FROM input_requests i
WHERE i.response IS NULL AND i.expires_at IS NOT NULL

-- held_leases --
SELECT task_id, lease_holder, attempts, owner_id, tool_name, lease_expires_at
FROM tasks WHERE phase = 'running' ORDER BY lease_expires_at

-- expired_leases --
SELECT task_id, lease_holder, attempts, owner_id, tool_name, lease_expires_at
FROM tasks WHERE phase = 'running' AND lease_expires_at < %s ORDER BY lease_expires_at

-- purge_expired --
DELETE FROM tasks
WHERE seq IN (
    SELECT seq FROM tasks
    WHERE phase = 'done' AND expires_at IS NOT NULL AND expires_at <= %s
    ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED
)
RETURNING task_id

-- purge_changes_of --
DELETE FROM task_changes WHERE task_id = ANY(%s)

-- purge_steps_of --
DELETE FROM steps WHERE task_id = ANY(%s)

-- purge_inputs_of --
DELETE FROM input_requests WHERE task_id = ANY(%s)

-- prune_feed --
DELETE FROM task_changes
WHERE ctid IN (
    SELECT ctid FROM task_changes
    WHERE kind IN ('progress', 'log') AND at < %s LIMIT %s
)

-- forget_idle_buckets --
DELETE FROM budgets WHERE updated_at < %s

-- sync_default_limits --
UPDATE clients SET concurrency = %s, backlog = %s

-- sync_client_limits --
UPDATE clients SET concurrency = %s, backlog = %s WHERE owner_id = %s

-- get_meta --
SELECT value FROM meta WHERE key = %s

-- put_meta --
INSERT INTO meta (key, value) VALUES (%s, %s)
ON CONFLICT (key) DO NOTHING

-- get_bucket --
SELECT level, updated_at FROM budgets WHERE name = %s AND dimension = %s

-- put_bucket --
INSERT INTO budgets (name, dimension, level, updated_at) VALUES (%s, %s, %s, %s)
ON CONFLICT (name, dimension) DO UPDATE SET
    level = excluded.level, updated_at = excluded.updated_at

-- notify --
SELECT pg_notify(%s, %s)

-- lock_budget --
SELECT pg_advisory_xact_lock(hashtextextended('mcp_tasks budget ' || %s, 0))

-- feed_head --
SELECT pg_snapshot_xmin(pg_current_snapshot())::text

-- changes_after --
SELECT c.position, c.task_id, c.owner_id, c.kind, c.status, c.status_message,
       c.reason, c.at, c.data, c.feed_key::text, h.horizon::text
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon) h
LEFT JOIN LATERAL (
    SELECT * FROM task_changes
    WHERE (feed_key, position) > (%s::xid8, %s::bigint) AND feed_key < h.horizon
    ORDER BY feed_key, position LIMIT %s
) c ON true
ORDER BY c.feed_key, c.position

-- list_tasks --
-- Newest first by seq (the primary key, read backwards); each filter is off
-- when its parameter is NULL or an empty array.
SELECT task_id, owner_id, tool_name, status, status_message, created_at,
       updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
       progress, progress_total, NULL, seq, phase, attempts, lease_holder
FROM tasks
WHERE (%(owner)s::text IS NULL OR owner_id = %(owner)s::text)
  AND (cardinality(%(statuses)s::text[]) = 0 OR status = ANY(%(statuses)s::text[]))
  AND seq < %(before)s
ORDER BY seq DESC LIMIT %(limit)s

-- retry --
UPDATE tasks SET status = 'working', phase = 'queued', status_message = %s,
       updated_at = %s, outcome = NULL, tool_error = NULL, not_before = NULL,
       progress = NULL, progress_total = NULL
WHERE task_id = %s AND status = 'failed'
RETURNING task_id, owner_id, tool_name, status, status_message, created_at,
          updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
          progress, progress_total, NULL

-- sealing_keys --
SELECT key_id, canary FROM sealing_keys

-- add_sealing_key --
INSERT INTO sealing_keys (key_id, canary) VALUES (%s, %s)
ON CONFLICT (key_id) DO NOTHING

-- forget_sealing_key --
DELETE FROM sealing_keys WHERE key_id = %s

-- reseal_tasks_page --
SELECT t.seq, t.task_id, t.arguments, t.request_meta, t.outcome, t.tool_error,
       t.status_message
FROM tasks t, (SELECT %s::bigint AS after, %s::text AS prefix) p
WHERE t.seq > p.after AND (
    NOT starts_with(t.arguments, p.prefix) OR NOT starts_with(t.request_meta, p.prefix)
    OR NOT starts_with(t.outcome, p.prefix) OR NOT starts_with(t.tool_error, p.prefix)
    OR NOT starts_with(t.status_message, p.prefix)
)
ORDER BY t.seq LIMIT %s

-- reseal_task --
UPDATE tasks SET arguments = %s, request_meta = %s, outcome = %s, tool_error = %s,
       status_message = %s
WHERE seq = %s AND arguments = %s AND request_meta = %s
  AND outcome IS NOT DISTINCT FROM %s::text AND tool_error IS NOT DISTINCT FROM %s::text
  AND status_message IS NOT DISTINCT FROM %s::text

-- reseal_changes_page --
SELECT c.feed_key::text, c.position, c.task_id, c.status_message, c.data
FROM task_changes c,
     (SELECT %s::xid8 AS feed_key, %s::bigint AS position, %s::text AS prefix) p
WHERE (c.feed_key, c.position) > (p.feed_key, p.position) AND (
    NOT starts_with(c.status_message, p.prefix) OR NOT starts_with(c.data, p.prefix)
)
ORDER BY c.feed_key, c.position LIMIT %s

-- reseal_change --
UPDATE task_changes SET status_message = %s, data = %s
WHERE feed_key = %s::xid8 AND position = %s
  AND status_message IS NOT DISTINCT FROM %s::text AND data IS NOT DISTINCT FROM %s::text

-- reseal_steps_page --
SELECT s.task_id, s.step_key, s.result
FROM steps s, (SELECT %s::text AS task_id, %s::text AS step_key, %s::text AS prefix) p
WHERE (s.task_id, s.step_key) > (p.task_id, p.step_key)
  AND NOT starts_with(s.result, p.prefix)
ORDER BY s.task_id, s.step_key LIMIT %s

-- reseal_step --
UPDATE steps SET result = %s WHERE task_id = %s AND step_key = %s AND result = %s

-- reseal_inputs_page --
SELECT i.task_id, i.request_key, i.params, i.response
FROM input_requests i,
     (SELECT %s::text AS task_id, %s::text AS request_key, %s::text AS prefix) p
WHERE (i.task_id, i.request_key) > (p.task_id, p.request_key) AND (
    NOT starts_with(i.params, p.prefix) OR NOT starts_with(i.response, p.prefix)
)
ORDER BY i.task_id, i.request_key LIMIT %s

-- reseal_input --
UPDATE input_requests SET params = %s, response = %s
WHERE task_id = %s AND request_key = %s AND params = %s
  AND response IS NOT DISTINCT FROM %s::text

-- key_in_use --
SELECT EXISTS (
    SELECT 1 FROM tasks t WHERE starts_with(t.arguments, p.prefix)
        OR starts_with(t.request_meta, p.prefix) OR starts_with(t.outcome, p.prefix)
        OR starts_with(t.tool_error, p.prefix) OR starts_with(t.status_message, p.prefix)
) OR EXISTS (
    SELECT 1 FROM task_changes c WHERE starts_with(c.status_message, p.prefix)
        OR starts_with(c.data, p.prefix)
) OR EXISTS (
    SELECT 1 FROM steps s WHERE starts_with(s.result, p.prefix)
) OR EXISTS (
    SELECT 1 FROM input_requests i WHERE starts_with(i.params, p.prefix)
        OR starts_with(i.response, p.prefix)
)
FROM (SELECT %s::text AS prefix) p
