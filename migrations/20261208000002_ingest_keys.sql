-- Idempotency keys of jobs posted to the HTTP endpoint (`ingest`): a key
-- posted again within the ledger's retention is answered with the first
-- result, not published again. `published` turns true once the broker
-- confirmed the job; a key left unpublished (a crash, a broker that did not
-- confirm) is published again by the next post of it, under the same
-- message_id, which the worker's ledger knows.
CREATE TABLE IF NOT EXISTS ingest_keys (
    app         BIGINT      NOT NULL,
    queue       TEXT        NOT NULL,
    key         TEXT        NOT NULL,
    body_digest TEXT        NOT NULL,
    urgent      BOOLEAN     NOT NULL,
    published   BOOLEAN     NOT NULL DEFAULT false,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app, queue, key)
);

CREATE INDEX IF NOT EXISTS ingest_keys_created_at ON ingest_keys (created_at);
