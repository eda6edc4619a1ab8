-- Sessions, refresh tokens, the ledger of issued access tokens, and HS256 secrets.

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY NOT NULL,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    user_id      TEXT NOT NULL,
    client_id    TEXT,
    scope        TEXT,
    audience     TEXT,
    -- Custom claims (a JSON object) copied into every access token of the session.
    claims       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    -- Moves forward with every refresh: the session ends when its newest refresh token does.
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    revoke_reason TEXT
) STRICT;

CREATE INDEX sessions_tenant_user ON sessions (tenant_id, user_id);

-- Refresh tokens are stored only as SHA-256 hashes.
CREATE TABLE refresh_tokens (
    token_hash  BLOB PRIMARY KEY NOT NULL,
    session_id  TEXT NOT NULL REFERENCES sessions (id),
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    -- Set when exchanged; presenting it again after the grace is reuse.
    used_at     INTEGER
) STRICT;

CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Every access token issued: what a key signed, for leak response and for keeping a
-- retired key published until its last token has expired.
CREATE TABLE access_tokens (
    jti         TEXT PRIMARY KEY NOT NULL,
    tenant_id   TEXT NOT NULL,
    kid         TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX access_tokens_kid ON access_tokens (tenant_id, kid, issued_at);

CREATE TABLE hmac_secrets (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    kid         TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('current', 'previous', 'retired')),
    kek_id      TEXT NOT NULL,
    wrapped_dek BLOB NOT NULL,
    secret      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    not_after   INTEGER,
    PRIMARY KEY (tenant_id, kid)
) STRICT;

CREATE UNIQUE INDEX hmac_secrets_one_current ON hmac_secrets (tenant_id) WHERE state = 'current';
CREATE UNIQUE INDEX hmac_secrets_one_previous ON hmac_secrets (tenant_id) WHERE state = 'previous';
