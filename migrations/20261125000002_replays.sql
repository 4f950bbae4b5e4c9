-- How often a job had been replayed from the dead-letter queue when its call
-- began: a later replay of a settled job is a new job, not a repeat.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS replays INTEGER NOT NULL DEFAULT 0;
