-- Schema version 2: durable steps and durable input requests.
--
-- A step's result is recorded once per (task, key); a re-run of the task after a
-- crash or a pause replays recorded results instead of running the step again.
-- An input request is a question the task put to the requestor (elicitation or
-- sampling); `response` is NULL until answered and is written at most once.

CREATE TABLE steps (
    task_id TEXT NOT NULL,
    step_key TEXT NOT NULL,
    result TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (task_id, step_key)
) WITHOUT ROWID;

CREATE TABLE input_requests (
    task_id TEXT NOT NULL,
    request_key TEXT NOT NULL,
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    response TEXT,
    created_at REAL NOT NULL,
    answered_at REAL,
    expires_at REAL,
    PRIMARY KEY (task_id, request_key)
) WITHOUT ROWID;

CREATE INDEX input_requests_open ON input_requests (expires_at)
    WHERE response IS NULL AND expires_at IS NOT NULL;

-- How many times the task was put back for a retry (backoff counts these, not
-- the times it was claimed: resuming after an answer or a restart is no retry).
ALTER TABLE tasks ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
