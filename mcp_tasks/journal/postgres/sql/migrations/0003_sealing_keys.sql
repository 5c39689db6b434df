-- Schema version 3 of the PostgreSQL journal: the keys its values are
-- encrypted with (the SQLite journal's version 4).
--
-- One row per key id that has sealed values here, with a canary (a known text
-- sealed with that key): at start-up every recorded key must be in the key
-- file and open its canary, so a wrong or missing key is refused before any
-- value is served (mcp_tasks/journal/_sealing.py). A journal without rows
-- here holds no sealed values. An mcp-tasks older than this schema refuses
-- the journal (a newer schema) rather than serve sealed values as arguments.
CREATE TABLE sealing_keys (
    key_id text PRIMARY KEY,
    canary text NOT NULL
);
