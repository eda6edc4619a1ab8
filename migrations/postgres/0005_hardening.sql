-- Refresh-token lineage (only the newest exchange of a token survives a retry within the
-- reuse grace) and indexes for "latest expiry of a session's / user's / tenant's tokens",
-- which decides how long a revocation is kept.

-- Set when a retry within the grace replaced this token's exchange: presenting it is reuse.
ALTER TABLE refresh_tokens ADD COLUMN superseded_at TIMESTAMPTZ;
ALTER TABLE refresh_tokens ADD COLUMN parent_hash BYTEA;

CREATE INDEX refresh_tokens_parent ON refresh_tokens (parent_hash);
CREATE INDEX access_tokens_session ON access_tokens (tenant_id, session_id, expires_at);
CREATE INDEX access_tokens_user ON access_tokens (tenant_id, user_id, expires_at);
CREATE INDEX access_tokens_expiry ON access_tokens (tenant_id, expires_at);
