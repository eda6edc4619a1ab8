-- Tenants, their signing keys and the audit trail.

CREATE TABLE tenants (
    id                  TEXT PRIMARY KEY,
    issuer              TEXT NOT NULL,
    audiences           JSONB NOT NULL,
    signing_alg         TEXT NOT NULL CHECK (signing_alg IN ('ES256', 'EdDSA', 'RS256')),
    rotation_period_s   BIGINT NOT NULL CHECK (rotation_period_s > 0),
    overlap_s           BIGINT NOT NULL CHECK (overlap_s >= 0),
    stage_lead_s        BIGINT NOT NULL CHECK (stage_lead_s >= 0),
    access_token_ttl_s  BIGINT NOT NULL CHECK (access_token_ttl_s > 0),
    refresh_token_ttl_s BIGINT NOT NULL CHECK (refresh_token_ttl_s > 0),
    -- Bumped by every change to the tenant or its keys: replicas compare it to find what
    -- they missed.
    version             BIGINT NOT NULL DEFAULT 1,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);

CREATE TABLE keys (
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    kid            TEXT NOT NULL,
    alg            TEXT NOT NULL CHECK (alg IN ('ES256', 'EdDSA', 'RS256')),
    state          TEXT NOT NULL CHECK (state IN ('staged', 'active', 'retired', 'expired', 'revoked')),
    public_jwk     TEXT NOT NULL,
    -- Envelope-encrypted private half: the data key wrapped by master key `kek_id`.
    kek_id         TEXT NOT NULL,
    wrapped_dek    BYTEA NOT NULL,
    private_key    BYTEA NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    activated_at   TIMESTAMPTZ,
    retired_at     TIMESTAMPTZ,
    expired_at     TIMESTAMPTZ,
    revoked_at     TIMESTAMPTZ,
    last_token_exp TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, kid)
);

-- The lifecycle's central invariant, enforced by the database and not only by code.
CREATE UNIQUE INDEX keys_one_active_per_tenant ON keys (tenant_id) WHERE state = 'active';

CREATE TABLE audit_events (
    id         BIGSERIAL PRIMARY KEY,
    at         TIMESTAMPTZ NOT NULL,
    tenant_id  TEXT,
    actor      TEXT NOT NULL,
    type       TEXT NOT NULL,
    kid        TEXT,
    session_id TEXT,
    user_id    TEXT,
    ip         TEXT,
    detail     TEXT
);

CREATE INDEX audit_events_tenant_at ON audit_events (tenant_id, at, id);

-- Small facts about this installation (e.g. the hash of a generated admin secret).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
