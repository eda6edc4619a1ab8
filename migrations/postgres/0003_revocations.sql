-- Revocations: the log every replica loads at start and re-reads when the tenant's
-- revocation_version moves. A row lives until no token it can match is still valid.

ALTER TABLE tenants ADD COLUMN revocation_version BIGINT NOT NULL DEFAULT 0;

CREATE TABLE revocations (
    id           BIGSERIAL PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    kind         TEXT NOT NULL CHECK (kind IN ('session', 'token', 'user', 'tenant')),
    -- The session id, jti or user id; empty for a tenant-wide revocation.
    subject      TEXT NOT NULL,
    -- For user and tenant revocations: sessions started before this are revoked.
    cutoff       TIMESTAMPTZ,
    forget_after TIMESTAMPTZ NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE INDEX revocations_live ON revocations (tenant_id, forget_after);

CREATE INDEX access_tokens_jti_tenant ON access_tokens (tenant_id, jti);
