-- Named queries of the SQLite journal. Each block is `-- name --` followed by
-- one statement; the name matches the journal operation that runs it.

-- insert_task --
INSERT INTO tasks (
    task_id, owner_id, tool_name, arguments, status, status_message,
    created_at, updated_at, ttl_seconds, expires_at, poll_interval_seconds,
    listed, request_meta, phase
) VALUES (?, ?, ?, ?, 'working', ?, ?, ?, ?, ?, ?, ?, ?, 'queued')

-- insert_event --
INSERT INTO task_events (task_id, status, status_message, reason, at)
VALUES (?, ?, ?, ?, ?)

-- get_task --
SELECT task_id, owner_id, tool_name, status, status_message, created_at,
       updated_at, ttl_seconds, poll_interval_seconds, outcome, listed
FROM tasks WHERE task_id = ?

-- list_owned --
SELECT seq, task_id, owner_id, tool_name, status, status_message, created_at,
       updated_at, ttl_seconds, poll_interval_seconds, outcome, listed
FROM tasks WHERE owner_id = ? AND listed = 1 AND seq > ?
ORDER BY seq LIMIT ?

-- task_seq --
SELECT seq FROM tasks WHERE task_id = ? AND owner_id = ?

-- events_of --
SELECT status, status_message, reason, at FROM task_events
WHERE task_id = ? ORDER BY event_id

-- unfinished --
SELECT task_id, owner_id, phase, status, not_before, lease_expires_at, tool_name
FROM tasks WHERE phase != 'done' ORDER BY seq

-- claim --
UPDATE tasks SET phase = 'running', lease_holder = ?, lease_expires_at = ?,
       attempts = attempts + 1
WHERE task_id = ? AND phase = 'queued' AND status = 'working'
RETURNING task_id, owner_id, tool_name, arguments, request_meta, attempts, retries

-- requeue --
UPDATE tasks SET phase = 'queued', lease_holder = NULL, lease_expires_at = NULL,
       not_before = NULL, status_message = ?, updated_at = ?
WHERE task_id = ? AND status = 'working' AND phase != 'done'
RETURNING task_id, status_message

-- set_status_message --
UPDATE tasks SET status_message = ?, updated_at = ?
WHERE task_id = ? AND phase != 'done'

-- purge_expired_events --
DELETE FROM task_events WHERE task_id IN (
    SELECT task_id FROM tasks
    WHERE phase = 'done' AND expires_at IS NOT NULL AND expires_at <= ?
)

-- purge_expired --
DELETE FROM tasks
WHERE phase = 'done' AND expires_at IS NOT NULL AND expires_at <= ?
RETURNING task_id

-- get_meta --
SELECT value FROM meta WHERE key = ?

-- put_meta --
INSERT INTO meta (key, value) VALUES (?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- steps_of --
SELECT step_key, result FROM steps WHERE task_id = ?

-- record_step --
INSERT INTO steps (task_id, step_key, result, recorded_at) VALUES (?, ?, ?, ?)
ON CONFLICT (task_id, step_key) DO NOTHING

-- forget_steps --
DELETE FROM steps WHERE task_id = ?

-- add_input_request --
INSERT INTO input_requests (task_id, request_key, method, params, created_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (task_id, request_key) DO NOTHING

-- input_requests_of --
SELECT request_key, method, params, response, expires_at FROM input_requests
WHERE task_id = ? ORDER BY created_at, request_key

-- answer_input_request --
UPDATE input_requests SET response = ?, answered_at = ?
WHERE task_id = ? AND request_key = ? AND response IS NULL
RETURNING request_key

-- open_input_count --
SELECT count(*) FROM input_requests WHERE task_id = ? AND response IS NULL

-- park --
UPDATE tasks SET phase = 'parked', lease_holder = NULL, lease_expires_at = NULL,
       not_before = ?, status_message = ?, updated_at = ?, retries = retries + ?
WHERE task_id = ? AND status = 'working' AND phase = 'running'
RETURNING task_id

-- renew_leases --
UPDATE tasks SET lease_expires_at = ?
WHERE lease_holder = ? AND phase = 'running'

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

-- due_input_timeouts --
SELECT i.task_id, i.request_key, i.expires_at FROM input_requests i
JOIN tasks t ON t.task_id = i.task_id
WHERE i.response IS NULL AND i.expires_at IS NOT NULL AND t.phase != 'done'
ORDER BY i.expires_at

-- awaiting_input --
SELECT task_id FROM tasks
WHERE owner_id = ? AND status = 'input_required' ORDER BY seq LIMIT ?

-- request_meta_of --
SELECT request_meta FROM tasks WHERE task_id = ?

-- expired_leases --
SELECT task_id, owner_id, phase, status, not_before, lease_expires_at, tool_name
FROM tasks WHERE phase = 'running' AND lease_expires_at < ? ORDER BY seq
