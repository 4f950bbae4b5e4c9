-- Fencing: every call in flight has one owner, the worker session that may
-- send it and settle it. A session draws its token from `ledger_sessions`
-- when it becomes its app's sender, so a later sender holds a larger token.
-- A session takes a call over from a smaller token (or from none), never
-- from a larger one, and every write that settles a call names its owner:
-- a session that lost its broker session without noticing (paused, cut
-- off) can neither overwrite nor settle what its successor now holds.
CREATE SEQUENCE IF NOT EXISTS ledger_sessions;

-- NULL: recorded before fencing, or released by a session that stopped
-- cleanly; taking such a call over is not an interruption.
ALTER TABLE calls ADD COLUMN IF NOT EXISTS owner BIGINT;

-- How many sessions ended with this job in a call in flight, unsettled
-- (counted when another session takes the call over). Past the configured
-- limit the job is dead-lettered as `crash-loop` instead of sent again.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS interruptions INTEGER NOT NULL DEFAULT 0;
