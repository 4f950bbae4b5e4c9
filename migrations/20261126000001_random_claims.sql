-- A call's content whatever its Random, so that a Random used by one call is
-- never given to a call of other content within the service's repeat window
-- (older rows have none and count as other content).
ALTER TABLE calls ADD COLUMN IF NOT EXISTS content_digest BYTEA;
CREATE INDEX IF NOT EXISTS calls_random ON calls (random, created_at);
