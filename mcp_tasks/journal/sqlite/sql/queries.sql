-- Named queries of the SQLite journal. Each block is `-- name --` followed by
-- one statement. Statements that a run makes are fenced by its lease: they
-- match the row only while `phase = 'running'` under the same holder and
-- attempt (the last three parameters), and, except `renew_lease` and
-- `stopped`, only while the task is still `working` (not cancelled).

-- upsert_client --
INSERT INTO clients (owner_id, concurrency, backlog) VALUES (?, ?, ?)
ON CONFLICT (owner_id) DO UPDATE SET
    concurrency = excluded.concurrency, backlog = excluded.backlog
RETURNING queued + running + parked + waiting

-- insert_task --
INSERT INTO tasks (
    task_id, owner_id, tool_name, arguments, status, status_message,
    created_at, updated_at, ttl_seconds, expires_at, poll_interval_seconds,
    listed, request_meta, phase
) VALUES (?, ?, ?, ?, 'working', ?, ?, ?, ?, ?, ?, ?, ?, 'queued')

-- insert_change --
INSERT INTO task_changes (task_id, owner_id, kind, status, status_message, reason, at, data)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)

-- get_task --
SELECT t.task_id, t.owner_id, t.tool_name, t.status, t.status_message, t.created_at,
       t.updated_at, t.ttl_seconds, t.poll_interval_seconds, t.listed, t.tool_error,
       t.progress, t.progress_total,
       CASE WHEN t.phase = 'queued' THEN (
           SELECT count(*) FROM tasks q
           WHERE q.owner_id = t.owner_id AND q.phase = 'queued' AND q.seq < t.seq
       ) END,
       CASE WHEN ? THEN t.outcome END,
       CASE WHEN t.phase = 'queued' THEN (
           SELECT c.concurrency FROM clients c
           WHERE c.owner_id = t.owner_id AND c.running >= c.concurrency
       ) END
FROM tasks t WHERE t.task_id = ?

-- get_task_quick --
-- One primary-key lookup, nothing else: read on the event loop (`_read_now`).
-- The last three columns: whether it is queued (the full read counts its
-- place), whether it has an outcome, and its rowid (to read the outcome).
SELECT t.task_id, t.owner_id, t.tool_name, t.status, t.status_message, t.created_at,
       t.updated_at, t.ttl_seconds, t.poll_interval_seconds, t.listed, t.tool_error,
       t.progress, t.progress_total, NULL, NULL, NULL,
       t.phase = 'queued', t.outcome IS NOT NULL, t.seq
FROM tasks t WHERE t.task_id = ?

-- list_owned --
SELECT seq, task_id, owner_id, tool_name, status, status_message, created_at,
       updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
       progress, progress_total, phase = 'queued'
FROM tasks WHERE owner_id = ? AND listed = 1 AND seq > ?
ORDER BY seq LIMIT ?

-- client_limit_if_full --
SELECT concurrency FROM clients WHERE owner_id = ? AND running >= concurrency

-- queued_ahead --
SELECT count(*) FROM tasks WHERE owner_id = ? AND phase = 'queued' AND seq < ?

-- request_meta_of --
SELECT request_meta FROM tasks WHERE task_id = ?

-- changes_of --
SELECT kind, status, status_message, reason, at, data FROM task_changes
WHERE task_id = ? ORDER BY position

-- steps_of --
SELECT step_key, result FROM steps WHERE task_id = ?

-- input_requests_of --
SELECT request_key, method, params, response, expires_at FROM input_requests
WHERE task_id = ? ORDER BY created_at, request_key

-- awaiting_input --
SELECT task_id FROM tasks
WHERE owner_id = ? AND status = 'input_required' ORDER BY seq LIMIT ?

-- load_all --
-- The oldest queued task is the first in the client's queue (seq order: tasks
-- are numbered as they are created), one index lookup rather than a scan of
-- every queued task: scraped metrics read this with 100,000 tasks queued.
SELECT c.owner_id, c.queued, c.running, c.parked, c.waiting, c.concurrency, c.backlog,
       (SELECT q.created_at FROM tasks q
        WHERE q.owner_id = c.owner_id AND q.phase = 'queued' ORDER BY q.seq LIMIT 1)
FROM clients c WHERE c.queued + c.running + c.parked + c.waiting > 0
ORDER BY c.owner_id

-- load_one --
SELECT c.owner_id, c.queued, c.running, c.parked, c.waiting, c.concurrency, c.backlog,
       (SELECT q.created_at FROM tasks q
        WHERE q.owner_id = c.owner_id AND q.phase = 'queued' ORDER BY q.seq LIMIT 1)
FROM clients c WHERE c.owner_id = ?

-- claimable --
SELECT 1 FROM clients WHERE queued > 0 AND running < concurrency LIMIT 1

-- pick_client --
SELECT owner_id FROM clients WHERE queued > 0 AND running < concurrency
ORDER BY last_served, owner_id LIMIT 1

-- claim_task --
UPDATE tasks SET phase = 'running', lease_holder = ?, lease_expires_at = ?,
       attempts = attempts + 1, updated_at = ?
WHERE seq = (
    SELECT seq FROM tasks WHERE owner_id = ? AND phase = 'queued' ORDER BY seq LIMIT 1
)
RETURNING task_id, owner_id, tool_name, arguments, request_meta, attempts, retries,
          status_message, created_at

-- next_turn --
UPDATE dispatch_turn SET turn = turn + 1 WHERE id = 1 RETURNING turn

-- serve_client --
UPDATE clients SET last_served = ? WHERE owner_id = ?

-- renew_lease --
UPDATE tasks SET lease_expires_at = ?
WHERE task_id = ? AND phase = 'running' AND lease_holder = ? AND attempts = ?
RETURNING status

-- stopped --
UPDATE tasks SET phase = 'done', lease_holder = NULL, lease_expires_at = NULL
WHERE task_id = ? AND phase = 'running' AND lease_holder = ? AND attempts = ?
  AND status = 'cancelled'
RETURNING owner_id

-- finish --
UPDATE tasks SET status = ?, status_message = ?, updated_at = ?, phase = 'done',
       outcome = ?, tool_error = ?, lease_holder = NULL, lease_expires_at = NULL,
       not_before = NULL,
       ttl_seconds = CASE WHEN ttl_seconds IS NULL THEN NULL
                          ELSE max(ttl_seconds, ? - created_at) END,
       expires_at = CASE WHEN ttl_seconds IS NULL THEN NULL
                         ELSE created_at + max(ttl_seconds, ? - created_at) END
WHERE task_id = ? AND phase = 'running' AND lease_holder = ? AND attempts = ?
  AND status = 'working'
RETURNING task_id, owner_id, tool_name, status, status_message, created_at,
          updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
          progress, progress_total, NULL

-- cancel --
UPDATE tasks SET status = 'cancelled', status_message = ?, updated_at = ?,
       phase = CASE WHEN phase = 'running' THEN 'running' ELSE 'done' END,
       not_before = NULL,
       ttl_seconds = CASE WHEN ttl_seconds IS NULL THEN NULL
                          ELSE max(ttl_seconds, ? - created_at) END,
       expires_at = CASE WHEN ttl_seconds IS NULL THEN NULL
                         ELSE created_at + max(ttl_seconds, ? - created_at) END
WHERE task_id = ? AND status IN ('working', 'input_required')
RETURNING task_id, owner_id, tool_name, status, status_message, created_at,
          updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
          progress, progress_total, NULL

-- fail_orphan --
UPDATE tasks SET status = 'failed', status_message = ?, updated_at = ?, phase = 'done',
       outcome = ?, lease_holder = NULL, lease_expires_at = NULL, not_before = NULL,
       ttl_seconds = CASE WHEN ttl_seconds IS NULL THEN NULL
                          ELSE max(ttl_seconds, ? - created_at) END,
       expires_at = CASE WHEN ttl_seconds IS NULL THEN NULL
                         ELSE created_at + max(ttl_seconds, ? - created_at) END
WHERE task_id = ? AND phase = 'running' AND lease_holder = ? AND attempts = ?
  AND status = 'working'
RETURNING task_id, owner_id, tool_name, status, status_message, created_at,
          updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
          progress, progress_total, NULL

-- park --
UPDATE tasks SET phase = 'parked', lease_holder = NULL, lease_expires_at = NULL,
       not_before = ?, status_message = ?, updated_at = ?, retries = retries + ?
WHERE task_id = ? AND phase = 'running' AND lease_holder = ? AND attempts = ?
  AND status = 'working'
RETURNING owner_id

-- ask --
UPDATE tasks SET status = 'input_required', phase = 'parked', lease_holder = NULL,
       lease_expires_at = NULL, not_before = NULL, status_message = ?, updated_at = ?
WHERE task_id = ? AND phase = 'running' AND lease_holder = ? AND attempts = ?
  AND status = 'working'
RETURNING task_id, owner_id, tool_name, status, status_message, created_at,
          updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
          progress, progress_total, NULL

-- requeue_running --
UPDATE tasks SET phase = 'queued', lease_holder = NULL, lease_expires_at = NULL,
       status_message = ?, updated_at = ?
WHERE task_id = ? AND phase = 'running' AND lease_holder = ? AND attempts = ?
  AND status = 'working'
RETURNING owner_id

-- report --
UPDATE tasks SET status_message = COALESCE(?, status_message),
       progress = COALESCE(?, progress), progress_total = COALESCE(?, progress_total),
       updated_at = ?
WHERE task_id = ? AND phase = 'running' AND lease_holder = ? AND attempts = ?
  AND status = 'working'
RETURNING owner_id, status_message

-- owner_of --
SELECT owner_id FROM tasks WHERE task_id = ?

-- lease_owner --
SELECT owner_id FROM tasks
WHERE task_id = ? AND phase = 'running' AND lease_holder = ? AND attempts = ?
  AND status = 'working'

-- record_step --
INSERT INTO steps (task_id, step_key, result, recorded_at) VALUES (?, ?, ?, ?)
ON CONFLICT (task_id, step_key) DO NOTHING

-- forget_steps --
DELETE FROM steps WHERE task_id = ?

-- add_input_request --
INSERT INTO input_requests (task_id, request_key, method, params, created_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (task_id, request_key) DO NOTHING

-- answer_input_request --
UPDATE input_requests SET response = ?, answered_at = ?
WHERE task_id = ? AND request_key = ? AND response IS NULL
RETURNING request_key

-- open_input_count --
SELECT count(*) FROM input_requests WHERE task_id = ? AND response IS NULL

-- resume --
UPDATE tasks SET status = 'working', phase = 'queued', status_message = ?, updated_at = ?
WHERE task_id = ? AND status = 'input_required'
RETURNING task_id, owner_id, tool_name, status, status_message, created_at,
          updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
          progress, progress_total, NULL

-- due_questions --
SELECT i.task_id, i.request_key FROM input_requests i
JOIN tasks t ON t.task_id = i.task_id
WHERE i.response IS NULL AND i.expires_at IS NOT NULL AND i.expires_at <= ?
  AND t.status = 'input_required'
ORDER BY i.expires_at

-- wake_due --
UPDATE tasks SET phase = 'queued', not_before = NULL, updated_at = ?
WHERE phase = 'parked' AND status = 'working' AND not_before <= ?
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
FROM tasks WHERE phase = 'running' AND lease_expires_at < ? ORDER BY lease_expires_at

-- purge_expired_changes --
DELETE FROM task_changes WHERE task_id IN (
    SELECT task_id FROM tasks
    WHERE phase = 'done' AND expires_at IS NOT NULL AND expires_at <= ?
)

-- purge_expired_steps --
DELETE FROM steps WHERE task_id IN (
    SELECT task_id FROM tasks
    WHERE phase = 'done' AND expires_at IS NOT NULL AND expires_at <= ?
)

-- purge_expired_inputs --
DELETE FROM input_requests WHERE task_id IN (
    SELECT task_id FROM tasks
    WHERE phase = 'done' AND expires_at IS NOT NULL AND expires_at <= ?
)

-- purge_expired --
DELETE FROM tasks
WHERE phase = 'done' AND expires_at IS NOT NULL AND expires_at <= ?
RETURNING task_id

-- prune_feed --
DELETE FROM task_changes WHERE kind IN ('progress', 'log') AND at < ?

-- forget_idle_buckets --
DELETE FROM budgets WHERE updated_at < ?

-- sync_default_limits --
UPDATE clients SET concurrency = ?, backlog = ?

-- sync_client_limits --
UPDATE clients SET concurrency = ?, backlog = ? WHERE owner_id = ?

-- get_meta --
SELECT value FROM meta WHERE key = ?

-- put_meta --
INSERT INTO meta (key, value) VALUES (?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- get_bucket --
SELECT level, updated_at FROM budgets WHERE name = ? AND dimension = ?

-- put_bucket --
INSERT INTO budgets (name, dimension, level, updated_at) VALUES (?, ?, ?, ?)
ON CONFLICT (name, dimension) DO UPDATE SET
    level = excluded.level, updated_at = excluded.updated_at

-- feed_head --
SELECT COALESCE(max(position), 0) FROM task_changes

-- changes_after --
SELECT position, task_id, owner_id, kind, status, status_message, reason, at, data
FROM task_changes WHERE position > ? ORDER BY position LIMIT ?

-- list_tasks --
SELECT task_id, owner_id, tool_name, status, status_message, created_at,
       updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
       progress, progress_total, NULL, seq, phase, attempts, lease_holder
FROM tasks
WHERE (?1 IS NULL OR owner_id = ?1)
  AND (?2 = '[]' OR status IN (SELECT value FROM json_each(?2)))
  AND seq < ?3
ORDER BY seq DESC LIMIT ?4

-- retry --
UPDATE tasks SET status = 'working', phase = 'queued', status_message = ?,
       updated_at = ?, outcome = NULL, tool_error = NULL, not_before = NULL,
       progress = NULL, progress_total = NULL
WHERE task_id = ? AND status = 'failed'
RETURNING task_id, owner_id, tool_name, status, status_message, created_at,
          updated_at, ttl_seconds, poll_interval_seconds, listed, tool_error,
          progress, progress_total, NULL

-- sealing_keys --
SELECT key_id, canary FROM sealing_keys

-- add_sealing_key --
INSERT INTO sealing_keys (key_id, canary) VALUES (?, ?)
ON CONFLICT (key_id) DO NOTHING

-- forget_sealing_key --
DELETE FROM sealing_keys WHERE key_id = ?

-- reseal_tasks_page --
SELECT seq, task_id, arguments, request_meta, outcome, tool_error, status_message
FROM tasks
WHERE seq > ?1 AND (
    substr(arguments, 1, length(?2)) <> ?2 OR substr(request_meta, 1, length(?2)) <> ?2
    OR substr(outcome, 1, length(?2)) <> ?2 OR substr(tool_error, 1, length(?2)) <> ?2
    OR substr(status_message, 1, length(?2)) <> ?2
)
ORDER BY seq LIMIT ?3

-- reseal_task --
UPDATE tasks SET arguments = ?, request_meta = ?, outcome = ?, tool_error = ?,
       status_message = ?
WHERE seq = ? AND arguments = ? AND request_meta = ? AND outcome IS ?
  AND tool_error IS ? AND status_message IS ?

-- reseal_changes_page --
SELECT position, task_id, status_message, data FROM task_changes
WHERE position > ?1 AND (
    substr(status_message, 1, length(?2)) <> ?2 OR substr(data, 1, length(?2)) <> ?2
)
ORDER BY position LIMIT ?3

-- reseal_change --
UPDATE task_changes SET status_message = ?, data = ?
WHERE position = ? AND status_message IS ? AND data IS ?

-- reseal_steps_page --
SELECT task_id, step_key, result FROM steps
WHERE (task_id, step_key) > (?1, ?2) AND substr(result, 1, length(?3)) <> ?3
ORDER BY task_id, step_key LIMIT ?4

-- reseal_step --
UPDATE steps SET result = ? WHERE task_id = ? AND step_key = ? AND result = ?

-- reseal_inputs_page --
SELECT task_id, request_key, params, response FROM input_requests
WHERE (task_id, request_key) > (?1, ?2) AND (
    substr(params, 1, length(?3)) <> ?3 OR substr(response, 1, length(?3)) <> ?3
)
ORDER BY task_id, request_key LIMIT ?4

-- reseal_input --
UPDATE input_requests SET params = ?, response = ?
WHERE task_id = ? AND request_key = ? AND params = ? AND response IS ?

-- key_in_use --
SELECT EXISTS (
    SELECT 1 FROM tasks WHERE substr(arguments, 1, length(?1)) = ?1
        OR substr(request_meta, 1, length(?1)) = ?1 OR substr(outcome, 1, length(?1)) = ?1
        OR substr(tool_error, 1, length(?1)) = ?1
        OR substr(status_message, 1, length(?1)) = ?1
) OR EXISTS (
    SELECT 1 FROM task_changes WHERE substr(status_message, 1, length(?1)) = ?1
        OR substr(data, 1, length(?1)) = ?1
) OR EXISTS (
    SELECT 1 FROM steps WHERE substr(result, 1, length(?1)) = ?1
) OR EXISTS (
    SELECT 1 FROM input_requests WHERE substr(params, 1, length(?1)) = ?1
        OR substr(response, 1, length(?1)) = ?1
)
