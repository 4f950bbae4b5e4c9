-- The delivery ledger: what was sent, in which call, and how it ended.

-- One row per call the worker made (a split call keeps its row as 'split').
CREATE TABLE IF NOT EXISTS calls (
    id          BIGSERIAL PRIMARY KEY,
    -- The body exactly as sent, and its Random: a resend must be byte-identical
    -- so that the service drops it as a repeat.
    body        BYTEA       NOT NULL,
    random      BIGINT      NOT NULL,
    job_count   INTEGER     NOT NULL,
    state       TEXT        NOT NULL
        CHECK (state IN ('in_flight', 'delivered', 'dead_lettered', 'split', 'abandoned')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    settled_at  TIMESTAMPTZ,
    msg_seq     BIGINT,
    error_code  BIGINT,
    error_info  TEXT
);

-- One row per job id: the call it is (or was last) part of, and its fate.
CREATE TABLE IF NOT EXISTS jobs (
    job_id      TEXT        PRIMARY KEY,
    call_id     BIGINT      NOT NULL REFERENCES calls (id),
    state       TEXT        NOT NULL
        CHECK (state IN ('in_flight', 'delivered', 'dead_lettered')),
    reason      TEXT,
    error_code  BIGINT,
    error_info  TEXT,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS jobs_call_id ON jobs (call_id);
CREATE INDEX IF NOT EXISTS jobs_settled ON jobs (updated_at) WHERE state <> 'in_flight';
CREATE INDEX IF NOT EXISTS calls_settled ON calls (settled_at) WHERE state <> 'in_flight';
