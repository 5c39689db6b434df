-- Schema version 4: the keys a journal's values are encrypted with.
--
-- One row per key id that has sealed values here, with a canary (a known text
-- sealed with that key): at start-up every recorded key must be in the key
-- file and open its canary, so a wrong or missing key is refused before any
-- value is served (mcp_tasks/journal/_sealing.py). A journal without rows
-- here holds no sealed values. An mcp-tasks older than this schema refuses
-- the journal (a newer schema) rather than serve sealed values as arguments.
CREATE TABLE sealing_keys (
    key_id TEXT PRIMARY KEY,
    canary TEXT NOT NULL
);
