-- Tenants, their signing keys and the audit trail.
-- Timestamps are INTEGER microseconds since the Unix epoch (UTC): PostgreSQL's resolution,
-- and they sort and compare as numbers.

CREATE TABLE tenants (
    id                  TEXT PRIMARY KEY NOT NULL,
    issuer              TEXT NOT NULL,
    audiences           TEXT NOT NULL,
    signing_alg         TEXT NOT NULL CHECK (signing_alg IN ('ES256', 'EdDSA', 'RS256')),
    rotation_period_s   INTEGER NOT NULL CHECK (rotation_period_s > 0),
    overlap_s           INTEGER NOT NULL CHECK (overlap_s >= 0),
    stage_lead_s        INTEGER NOT NULL CHECK (stage_lead_s >= 0),
    access_token_ttl_s  INTEGER NOT NULL CHECK (access_token_ttl_s > 0),
    refresh_token_ttl_s INTEGER NOT NULL CHECK (refresh_token_ttl_s > 0),
    -- Bumped by every change to the tenant or its keys: replicas compare it to find what
    -- they missed.
    version             INTEGER NOT NULL DEFAULT 1,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
) STRICT;

CREATE TABLE keys (
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    kid            TEXT NOT NULL,
    alg            TEXT NOT NULL CHECK (alg IN ('ES256', 'EdDSA', 'RS256')),
    state          TEXT NOT NULL CHECK (state IN ('staged', 'active', 'retired', 'expired', 'revoked')),
    public_jwk     TEXT NOT NULL,
    -- Envelope-encrypted private half: the data key wrapped by master key `kek_id`.
    kek_id         TEXT NOT NULL,
    wrapped_dek    BLOB NOT NULL,
    private_key    BLOB NOT NULL,
    created_at     INTEGER NOT NULL,
    activated_at   INTEGER,
    retired_at     INTEGER,
    expired_at     INTEGER,
    revoked_at     INTEGER,
    last_token_exp INTEGER,
    PRIMARY KEY (tenant_id, kid)
) STRICT;

-- The lifecycle's central invariant, enforced by the database and not only by code.
CREATE UNIQUE INDEX keys_one_active_per_tenant ON keys (tenant_id) WHERE state = 'active';

CREATE TABLE audit_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    tenant_id  TEXT,
    actor      TEXT NOT NULL,
    type       TEXT NOT NULL,
    kid        TEXT,
    session_id TEXT,
    user_id    TEXT,
    ip         TEXT,
    detail     TEXT
) STRICT;

CREATE INDEX audit_events_tenant_at ON audit_events (tenant_id, at, id);

-- Small facts about this installation (e.g. the hash of a generated admin secret).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;
