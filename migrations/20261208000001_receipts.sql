-- The receipts outbox: the receipt of a job published with `reply_to`, kept
-- from just before its settle record until the broker confirmed it. `ready`
-- turns true once the job's fate is recorded (a row written before a crash
-- that stopped the record is rewritten by the job's next settle); a ready
-- row that a dying worker did not publish is published by the app's next
-- sender.
CREATE TABLE IF NOT EXISTS receipts (
    app            BIGINT      NOT NULL,
    queue          TEXT        NOT NULL,
    job_id         TEXT        NOT NULL,
    reply_to       TEXT        NOT NULL,
    correlation_id TEXT        NOT NULL,
    body           BYTEA       NOT NULL,
    ready          BOOLEAN     NOT NULL DEFAULT false,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app, queue, job_id)
);

CREATE INDEX IF NOT EXISTS receipts_ready ON receipts (app, queue) WHERE ready;
CREATE INDEX IF NOT EXISTS receipts_created_at ON receipts (created_at);
