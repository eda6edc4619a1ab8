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
    created_at   TIMESTAMPTZ NOT NULL,
    -- Moves forward with every refresh: the session ends when its newest refresh token does.
    expires_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ,
    revoke_reason TEXT
);

CREATE INDEX sessions_tenant_user ON sessions (tenant_id, user_id);

-- Refresh tokens are stored only as SHA-256 hashes.
CREATE TABLE refresh_tokens (
    token_hash  BYTEA PRIMARY KEY NOT NULL,
    session_id  TEXT NOT NULL REFERENCES sessions (id),
    issued_at   TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    -- Set when exchanged; presenting it again after the grace is reuse.
    used_at     TIMESTAMPTZ
);

CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- Every access token issued: what a key signed, for leak response and for keeping a
-- retired key published until its last token has expired.
CREATE TABLE access_tokens (
    jti         TEXT PRIMARY KEY NOT NULL,
    tenant_id   TEXT NOT NULL,
    kid         TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    issued_at   TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);

CREATE INDEX access_tokens_kid ON access_tokens (tenant_id, kid, issued_at);

CREATE TABLE hmac_secrets (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    kid         TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('current', 'previous', 'retired')),
    kek_id      TEXT NOT NULL,
    wrapped_dek BYTEA NOT NULL,
    secret      BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    not_after   TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, kid)
);

CREATE UNIQUE INDEX hmac_secrets_one_current ON hmac_secrets (tenant_id) WHERE state = 'current';
CREATE UNIQUE INDEX hmac_secrets_one_previous ON hmac_secrets (tenant_id) WHERE state = 'previous';
