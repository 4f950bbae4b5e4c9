-- Job identities scoped to their deployment, arrivals of jobs without a
-- message_id, and in-doubt calls pruned like settled ones.

-- A job id means one job only within its app (the SDKAppID) and its jobs
-- queue: two deployments sharing this database may both use the id "m5".
-- Calls carry the same scope, so that a Random is claimed per app (the
-- service's repeat filter is per app).
--
-- Rows written before this migration get the legacy scope, app 0 and queue ''
-- (no SDKAppID is 0 and no queue is unnamed), which every worker reads as
-- its own, after its own rows. A single-app deployment that upgrades with
-- calls in flight thus still resends them, and acks the jobs it had settled,
-- exactly as before. What legacy rows cannot say is which deployment wrote
-- them: two deployments that shared the database before the upgrade keep
-- the old confusion for those rows only, until they are pruned (7 days).
-- The defaults are dropped afterwards: every new row names its scope.
ALTER TABLE calls
    ADD COLUMN app   BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN queue TEXT   NOT NULL DEFAULT '';
ALTER TABLE calls ALTER COLUMN app DROP DEFAULT, ALTER COLUMN queue DROP DEFAULT;

ALTER TABLE jobs
    ADD COLUMN app   BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN queue TEXT   NOT NULL DEFAULT '';
ALTER TABLE jobs ALTER COLUMN app DROP DEFAULT, ALTER COLUMN queue DROP DEFAULT;
-- job_id leads the key, so that `jobs show ID` (any scope) finds it by index.
ALTER TABLE jobs DROP CONSTRAINT jobs_pkey, ADD PRIMARY KEY (job_id, app, queue);

-- A job without message_id gets an id of its own at each fresh arrival (the
-- same announcement published twice is two broadcasts); `digest` is its
-- body's digest, by which a redelivered copy finds the arrival it repeats.
-- `acked` says the arrival's delivery was acked after it was settled, so no
-- later copy can be that arrival. Before this migration such a job's id was
-- its digest: those rows get it as their digest and count as not acked,
-- which keeps the old rule ("the same body is the same job") for them.
ALTER TABLE jobs
    ADD COLUMN digest TEXT,
    ADD COLUMN acked  BOOLEAN NOT NULL DEFAULT false;
UPDATE jobs SET digest = job_id WHERE job_id LIKE 'sha256:%';
CREATE INDEX jobs_digest ON jobs (digest) WHERE digest IS NOT NULL;

-- Pruning now takes calls in flight (in doubt) as well as settled ones.
DROP INDEX IF EXISTS jobs_settled;
DROP INDEX IF EXISTS calls_settled;
CREATE INDEX jobs_updated ON jobs (updated_at);
CREATE INDEX calls_last_change ON calls ((COALESCE(settled_at, created_at)));
