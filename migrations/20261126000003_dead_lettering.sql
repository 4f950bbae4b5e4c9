-- A call whose jobs are being dead-lettered after it may have been delivered
-- (retries exhausted, or in doubt): marked before the first dead letter is
-- published, closed once every job is recorded. Jobs of such a call that
-- come back after a crash are dead-lettered as in doubt, never sent again.
ALTER TABLE calls DROP CONSTRAINT IF EXISTS calls_state_check;
ALTER TABLE calls ADD CONSTRAINT calls_state_check
    CHECK (state IN ('in_flight', 'delivered', 'dead_lettered', 'split', 'abandoned', 'dead_lettering'));
