//! SQL text shared by both backends (both accept `$n` placeholders). Statements that differ
//! between PostgreSQL and SQLite stay in their backend module.

pub(super) const INSERT_EVENT: &str = "INSERT INTO audit_events \
    (at, tenant_id, actor, type, kid, session_id, user_id, ip, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

pub(super) const INSERT_FRESH_KEY: &str = "INSERT INTO keys \
    (tenant_id, kid, alg, state, public_jwk, kek_id, wrapped_dek, private_key, created_at) \
    VALUES ($1, $2, $3, 'staged', $4, $5, $6, $7, $8)";

pub(super) const BUMP_VERSION: &str = "UPDATE tenants SET version = version + 1 WHERE id = $1";

/// Optimistic concurrency for key plans: `$1` tenant, `$2` the version the plan was
/// computed from. On PostgreSQL the row lock also queues a concurrent plan behind this one,
/// which then finds the version moved and fails as stale instead of doing damage.
pub(super) const BUMP_VERSION_FROM: &str = "UPDATE tenants SET version = version + 1 WHERE id = $1 AND version = $2";

pub(super) const INSERT_SESSION: &str = "INSERT INTO sessions \
    (id, tenant_id, user_id, client_id, scope, audience, claims, created_at, expires_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// `$5`: the refresh token this one was exchanged for (none for a session's first).
pub(super) const INSERT_REFRESH: &str = "INSERT INTO refresh_tokens \
    (token_hash, session_id, issued_at, expires_at, parent_hash) VALUES ($1, $2, $3, $4, $5)";

/// Within the reuse grace, a new exchange of `$1` supersedes its earlier ones (`$2` now):
/// only the newest chain survives, and presenting a superseded token is reuse.
pub(super) const SUPERSEDE_SIBLINGS: &str =
    "UPDATE refresh_tokens SET superseded_at = $2 WHERE parent_hash = $1 AND superseded_at IS NULL";

/// Whether an earlier exchange of `$1` has itself been exchanged already: then a retry of
/// `$1` is not a lost response but a second holder, and counts as reuse.
pub(super) const CHILD_USED: &str =
    "SELECT COUNT(*) FROM refresh_tokens WHERE parent_hash = $1 AND used_at IS NOT NULL";

pub(super) const INSERT_ACCESS: &str = "INSERT INTO access_tokens \
    (jti, tenant_id, kid, session_id, user_id, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// `$1` tenant, `$2` kid, `$3` the exp of a token just signed. Affects one row exactly
/// when the key is still active: a replica that has not yet heard of a rotation or a
/// revocation must not hand out tokens signed by a key the database has demoted.
pub(super) const ADVANCE_LAST_TOKEN_EXP: &str = "UPDATE keys SET last_token_exp = \
    CASE WHEN last_token_exp IS NULL OR last_token_exp < $3 THEN $3 ELSE last_token_exp END \
    WHERE tenant_id = $1 AND kid = $2 AND state = 'active'";

pub(super) const MARK_REFRESH_USED: &str =
    "UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL";

/// `$1` session, `$2` new expiry.
pub(super) const EXTEND_SESSION: &str = "UPDATE sessions SET expires_at = $2 WHERE id = $1 AND expires_at < $2";

pub(super) const REVOKE_SESSION_FOR_REUSE: &str =
    "UPDATE sessions SET revoked_at = $2, revoke_reason = 'refresh_token_reuse' WHERE id = $1 AND revoked_at IS NULL";

pub(super) const RETIRE_PREVIOUS_SECRET: &str =
    "UPDATE hmac_secrets SET state = 'retired' WHERE tenant_id = $1 AND state = 'previous'";

pub(super) const RETIRE_ALL_SECRETS: &str =
    "UPDATE hmac_secrets SET state = 'retired' WHERE tenant_id = $1 AND state IN ('current', 'previous')";

pub(super) const INSERT_SECRET: &str = "INSERT INTO hmac_secrets \
    (tenant_id, kid, state, kek_id, wrapped_dek, secret, created_at, not_after) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

pub(super) const INSERT_REVOCATION: &str = "INSERT INTO revocations \
    (tenant_id, kind, subject, cutoff, forget_after, created_at) VALUES ($1, $2, $3, $4, $5, $6)";

pub(super) const BUMP_REVOCATION_VERSION: &str =
    "UPDATE tenants SET revocation_version = revocation_version + 1 WHERE id = $1";

pub(super) const TENANT_VERSIONS: &str = "SELECT id, version, revocation_version FROM tenants ORDER BY id";

/// `$1` tenant, `$2` now, `$3` scope user id or session id (unused for all).
pub(super) const REVOKE_ALL_SESSIONS: &str = "UPDATE sessions SET revoked_at = $2, revoke_reason = 'admin' \
    WHERE tenant_id = $1 AND revoked_at IS NULL";
pub(super) const REVOKE_USER_SESSIONS: &str = "UPDATE sessions SET revoked_at = $2, revoke_reason = 'admin' \
    WHERE tenant_id = $1 AND user_id = $3 AND revoked_at IS NULL";
pub(super) const REVOKE_ONE_SESSION: &str = "UPDATE sessions SET revoked_at = $2, revoke_reason = 'admin' \
    WHERE tenant_id = $1 AND id = $3 AND revoked_at IS NULL";

pub(super) const SESSION_EXISTS: &str = "SELECT COUNT(*) FROM sessions WHERE tenant_id = $1 AND id = $2";

pub(super) const TOKEN_EXPIRY: &str = "SELECT expires_at FROM access_tokens WHERE tenant_id = $1 AND jti = $2";

pub(super) const LIVE_REVOCATIONS: &str = "SELECT kind, subject, cutoff, forget_after FROM revocations \
    WHERE tenant_id = $1 AND forget_after > $2 ORDER BY id";

pub(super) const KEY_USAGE_TOTAL: &str = "SELECT COUNT(*) FROM access_tokens \
    WHERE tenant_id = $1 AND kid = $2 AND issued_at >= $3 AND issued_at < $4";

pub(super) const KEY_USAGE_SESSIONS: &str = "SELECT session_id, user_id, COUNT(*) AS tokens, \
    MAX(expires_at) AS last_exp FROM access_tokens \
    WHERE tenant_id = $1 AND kid = $2 AND issued_at >= $3 AND issued_at < $4 \
    GROUP BY session_id, user_id ORDER BY MAX(expires_at) DESC, session_id LIMIT $5";

/// `$1` name, `$2` holder, `$3` now, `$4` until. Affects one row exactly when `$2` now
/// holds the lease: it was free, expired, or already `$2`'s.
pub(super) const ACQUIRE_LEASE: &str = "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $4) \
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
    WHERE leases.holder = excluded.holder OR leases.expires_at < $3";

pub(super) const SEALED_KEYS: &str = "SELECT tenant_id, kid, kek_id, wrapped_dek, private_key AS ciphertext FROM keys";
pub(super) const SEALED_SECRETS: &str =
    "SELECT tenant_id, kid, kek_id, wrapped_dek, secret AS ciphertext FROM hmac_secrets";

/// Compare-and-set of a wrapped data key: `$1` tenant, `$2` kid, `$3` new KEK id, `$4` new
/// wrapped key, `$5` old KEK id, `$6` old wrapped key.
pub(super) const REWRAP_KEY: &str = "UPDATE keys SET kek_id = $3, wrapped_dek = $4 \
    WHERE tenant_id = $1 AND kid = $2 AND kek_id = $5 AND wrapped_dek = $6";
pub(super) const REWRAP_SECRET: &str = "UPDATE hmac_secrets SET kek_id = $3, wrapped_dek = $4 \
    WHERE tenant_id = $1 AND kid = $2 AND kek_id = $5 AND wrapped_dek = $6";

/// Housekeeping, `$1` a cutoff time.
pub(super) const PURGE_REFRESH: &str = "DELETE FROM refresh_tokens WHERE expires_at < $1";
pub(super) const PURGE_REVOCATIONS: &str = "DELETE FROM revocations WHERE forget_after < $1";
pub(super) const PURGE_ACCESS: &str = "DELETE FROM access_tokens WHERE expires_at < $1";

pub(super) const SET_META: &str =
    "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value";

pub(super) const LATEST_EXP_SESSION: &str =
    "SELECT MAX(expires_at) FROM access_tokens WHERE tenant_id = $1 AND session_id = $2";
pub(super) const LATEST_EXP_USER: &str =
    "SELECT MAX(expires_at) FROM access_tokens WHERE tenant_id = $1 AND user_id = $2";
pub(super) const LATEST_EXP_TENANT: &str = "SELECT MAX(expires_at) FROM access_tokens WHERE tenant_id = $1";

pub(super) const TENANT_EXISTS: &str = "SELECT COUNT(*) FROM tenants WHERE id = $1";
