-- Jobs that a later job of their latest-wins key (`x-coalesce-key`) replaced
-- before they were in any call: acked unsent. Recorded before the ack, so a
-- superseded job that comes back after a crash is known as settled and never
-- sent. Kept apart from `jobs`, whose rows each belong to a call.
CREATE TABLE IF NOT EXISTS superseded_jobs (
    app           BIGINT      NOT NULL,
    queue         TEXT        NOT NULL,
    job_id        TEXT        NOT NULL,
    superseded_by TEXT        NOT NULL,
    coalesce_key  TEXT        NOT NULL,
    superseded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app, queue, job_id)
);

CREATE INDEX IF NOT EXISTS superseded_jobs_at ON superseded_jobs (superseded_at);
