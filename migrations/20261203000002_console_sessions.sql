-- Console sessions ended by a logout. A session cookie is signed by the
-- console token and carries a random id; a logout enters that id here (as
-- a SHA-256, never the cookie) until the session would have expired, so
-- every replica sharing the ledger refuses a copy of the cookie from the
-- next request on. Rows past their expiry are pruned at each logout.
CREATE TABLE IF NOT EXISTS console_revoked_sessions (
    session_hash TEXT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS console_revoked_sessions_expiry
    ON console_revoked_sessions (expires_at);
