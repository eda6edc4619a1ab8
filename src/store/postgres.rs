//! The production backend: PostgreSQL, shared by every replica.
//!
//! Connection problems surface as [`StoreError::Unavailable`] within the pool's acquire
//! timeout, so a write during a database outage answers 503 promptly instead of hanging.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};
use time::OffsetDateTime;

use super::rows::{
    self, AUDIT_COLUMNS, Columns, KEY_COLUMNS, PresentedRefresh, RefreshDecision, SECRET_COLUMNS, SESSION_COLUMNS,
    TENANT_COLUMNS,
};
use super::{
    AuditRecord, IssuedAccess, KeyUsage, LoadedTenant, NewKey, NewRefresh, NewSecret, Purged, RefreshOutcome,
    RefreshRejection, RevocationKeep, SealedItem, SealedKind, SecretRotation, SecretState, SessionRecord, SessionScope,
    Store, StoreError, StoredKey, StoredSecret, TenantVersion, sql,
};
use crate::crypto::Sealed;
use crate::domain::{Actor, AuditEvent, KeyRef, Plan, StalePlan, Tenant, TenantId};
use crate::token::revocation::Revocation;

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::Config("DATABASE_URL is not a valid postgres:// URL".into()))?
            .application_name("keyward");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(PgStore { pool })
    }
}

impl Columns for PgRow {
    fn text(&self, col: &str) -> Result<String, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn text_opt(&self, col: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn ts(&self, col: &str) -> Result<OffsetDateTime, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn ts_opt(&self, col: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        Ok(self.try_get(col)?)
    }
}

async fn insert_events(conn: &mut PgConnection, events: &[AuditEvent]) -> Result<(), StoreError> {
    for e in events {
        sqlx::query(sql::INSERT_EVENT)
            .bind(e.at)
            .bind(e.tenant.as_ref().map(TenantId::as_str))
            .bind(&e.actor)
            .bind(e.kind.as_str())
            .bind(e.kid.as_deref())
            .bind(e.session_id.as_deref())
            .bind(e.user_id.as_deref())
            .bind(e.ip.as_deref())
            .bind((!e.detail.is_null()).then(|| e.detail.to_string()))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn apply_plan_in(
    conn: &mut PgConnection,
    tenant: &TenantId,
    expected_version: i64,
    plan: &Plan,
    fresh: Option<&NewKey>,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let bumped =
        sqlx::query(sql::BUMP_VERSION_FROM).bind(tenant.as_str()).bind(expected_version).execute(&mut *conn).await?;
    if bumped.rows_affected() != 1 {
        return Err(StalePlan { kid: String::new(), expected: "at the version the plan was computed from" }.into());
    }
    let fresh_kid = match (plan.fresh, fresh) {
        (Some(alg), Some(key)) => {
            sqlx::query(sql::INSERT_FRESH_KEY)
                .bind(tenant.as_str())
                .bind(&key.public.kid)
                .bind(alg.as_str())
                .bind(rows::jwk_json(&key.public))
                .bind(&key.sealed.kek_id)
                .bind(&key.sealed.wrapped_dek)
                .bind(&key.sealed.ciphertext)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Some(key.public.kid.as_str())
        }
        (None, _) => None,
        (Some(_), None) => return Err(StalePlan { kid: "<fresh>".into(), expected: "generated" }.into()),
    };
    for t in &plan.transitions {
        let kid = match &t.key {
            KeyRef::Existing(kid) => kid.as_str(),
            KeyRef::Fresh => fresh_kid.unwrap_or_default(),
        };
        let stamp = rows::stamp_column(t.to);
        let sql = rows::transition_sql(stamp);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(kid)
            .bind(t.to.as_str())
            .bind(t.from.as_str());
        if stamp.is_some() {
            query = query.bind(now);
        }
        let done = query.execute(&mut *conn).await?;
        if done.rows_affected() != 1 {
            return Err(StalePlan { kid: kid.to_owned(), expected: t.from.as_str() }.into());
        }
    }
    Ok(())
}

async fn insert_refresh(
    conn: &mut PgConnection,
    session_id: &str,
    refresh: &NewRefresh,
    parent: Option<&[u8; 32]>,
) -> Result<(), StoreError> {
    sqlx::query(sql::INSERT_REFRESH)
        .bind(refresh.hash.as_slice())
        .bind(session_id)
        .bind(refresh.issued_at)
        .bind(refresh.expires_at)
        .bind(parent.map(|p| p.as_slice()))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn record_access(
    conn: &mut PgConnection,
    session: &SessionRecord,
    access: &IssuedAccess,
) -> Result<(), StoreError> {
    sqlx::query(sql::INSERT_ACCESS)
        .bind(&access.jti)
        .bind(session.tenant.as_str())
        .bind(&access.kid)
        .bind(&session.id)
        .bind(&session.user_id)
        .bind(access.issued_at)
        .bind(access.expires_at)
        .execute(&mut *conn)
        .await?;
    let advanced = sqlx::query(sql::ADVANCE_LAST_TOKEN_EXP)
        .bind(session.tenant.as_str())
        .bind(&access.kid)
        .bind(access.expires_at)
        .execute(&mut *conn)
        .await?;
    if advanced.rows_affected() != 1 {
        return Err(StalePlan { kid: access.kid.clone(), expected: "active" }.into());
    }
    Ok(())
}

/// The latest expiry of an access token issued to the sessions in `scope`.
async fn latest_exp(
    conn: &mut PgConnection,
    tenant: &TenantId,
    scope: &SessionScope,
) -> Result<Option<OffsetDateTime>, StoreError> {
    let query = match scope {
        SessionScope::All => sqlx::query_scalar(sql::LATEST_EXP_TENANT).bind(tenant.as_str()),
        SessionScope::User(subject) | SessionScope::Session(subject) => {
            let statement =
                if matches!(scope, SessionScope::User(_)) { sql::LATEST_EXP_USER } else { sql::LATEST_EXP_SESSION };
            sqlx::query_scalar(statement).bind(tenant.as_str()).bind(subject.as_str())
        }
    };
    let latest: Option<OffsetDateTime> = query.fetch_one(&mut *conn).await?;
    Ok(latest)
}

async fn insert_secret(
    conn: &mut PgConnection,
    tenant: &TenantId,
    secret: &NewSecret,
    state: SecretState,
    not_after: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query(sql::INSERT_SECRET)
        .bind(tenant.as_str())
        .bind(&secret.kid)
        .bind(state.as_str())
        .bind(&secret.sealed.kek_id)
        .bind(&secret.sealed.wrapped_dek)
        .bind(&secret.sealed.ciphertext)
        .bind(now)
        .bind(not_after)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_revocation(
    conn: &mut PgConnection,
    tenant: &TenantId,
    revocation: &Revocation,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let (kind, subject, cutoff, forget_after) = rows::revocation_parts(revocation);
    sqlx::query(sql::INSERT_REVOCATION)
        .bind(tenant.as_str())
        .bind(kind)
        .bind(subject)
        .bind(cutoff)
        .bind(forget_after)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    sqlx::query(sql::BUMP_REVOCATION_VERSION).bind(tenant.as_str()).execute(&mut *conn).await?;
    Ok(())
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, <sqlx::Postgres as sqlx::Database>::Arguments>;

/// Binds `$1`..`$9` of a tenant insert or update: id, issuer, audiences and the policy.
fn bind_tenant<'q>(query: Query<'q>, tenant: &'q Tenant) -> Query<'q> {
    let p = &tenant.policy;
    query
        .bind(tenant.id.as_str())
        .bind(&tenant.issuer)
        .bind(rows::audiences_json(tenant))
        .bind(p.signing_alg.as_str())
        .bind(rows::period_i64(p.rotation_period))
        .bind(rows::period_i64(p.overlap))
        .bind(rows::period_i64(p.stage_lead))
        .bind(rows::period_i64(p.access_token_ttl))
        .bind(rows::period_i64(p.refresh_token_ttl))
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        super::migrations::postgres().run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(StoreError::Unavailable)?;
        Ok(())
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = $1").bind(key).fetch_optional(&self.pool).await?)
    }

    async fn insert_meta(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(sql::SET_META).bind(key).bind(value).execute(&self.pool).await?;
        Ok(())
    }

    async fn create_tenant(
        &self,
        tenant: &Tenant,
        plan: &Plan,
        fresh: Option<&NewKey>,
        now: OffsetDateTime,
        events: &[AuditEvent],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let insert = sqlx::query(
            "INSERT INTO tenants (id, issuer, audiences, signing_alg, rotation_period_s, overlap_s, stage_lead_s, \
             access_token_ttl_s, refresh_token_ttl_s, created_at, updated_at) \
             VALUES ($1, $2, CAST($3 AS JSONB), $4, $5, $6, $7, $8, $9, $10, $11)",
        );
        bind_tenant(insert, tenant).bind(tenant.created_at).bind(tenant.updated_at).execute(&mut *tx).await.map_err(
            |e| match StoreError::from(e) {
                StoreError::Conflict(_) => StoreError::Conflict("tenant"),
                other => other,
            },
        )?;
        // A new tenant starts at version 1 (the column default).
        apply_plan_in(&mut tx, &tenant.id, 1, plan, fresh, now).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_tenant(
        &self,
        tenant: &Tenant,
        expected_version: i64,
        events: &[AuditEvent],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let update = sqlx::query(
            "UPDATE tenants SET issuer = $2, audiences = CAST($3 AS JSONB), signing_alg = $4, rotation_period_s = $5, \
             overlap_s = $6, stage_lead_s = $7, access_token_ttl_s = $8, refresh_token_ttl_s = $9, updated_at = $10, \
             version = version + 1 WHERE id = $1 AND version = $11",
        );
        let done = bind_tenant(update, tenant).bind(tenant.updated_at).bind(expected_version).execute(&mut *tx).await?;
        if done.rows_affected() != 1 {
            let exists: i64 =
                sqlx::query_scalar(sql::TENANT_EXISTS).bind(tenant.id.as_str()).fetch_one(&mut *tx).await?;
            return Err(if exists == 0 {
                StoreError::NotFound
            } else {
                StalePlan { kid: String::new(), expected: "at the version the update was computed from" }.into()
            });
        }
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.as_str()).fetch_optional(&self.pool).await?;
        row.as_ref().map(rows::tenant).transpose()
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id");
        let all = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
        all.iter().map(rows::tenant).collect()
    }

    async fn tenant_versions(&self) -> Result<Vec<TenantVersion>, StoreError> {
        let all = sqlx::query(sql::TENANT_VERSIONS).fetch_all(&self.pool).await?;
        all.iter().map(rows::tenant_version).collect()
    }

    async fn load_tenant(&self, id: &TenantId) -> Result<Option<LoadedTenant>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let sql = format!("SELECT {TENANT_COLUMNS}, version FROM tenants WHERE id = $1");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.as_str()).fetch_optional(&mut *tx).await? else {
            return Ok(None);
        };
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE tenant_id = $1 ORDER BY created_at, kid");
        let keys = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.as_str()).fetch_all(&mut *tx).await?;
        let sql = format!(
            "SELECT {SECRET_COLUMNS} FROM hmac_secrets WHERE tenant_id = $1 AND state IN ('current', 'previous') \
             ORDER BY created_at"
        );
        let secrets = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.as_str()).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some(LoadedTenant {
            tenant: rows::tenant(&row)?,
            version: row.int("version")?,
            keys: keys.iter().map(rows::stored_key).collect::<Result<_, _>>()?,
            secrets: secrets.iter().map(rows::stored_secret).collect::<Result<_, _>>()?,
        }))
    }

    async fn list_keys(&self, tenant: &TenantId) -> Result<Vec<StoredKey>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE tenant_id = $1 ORDER BY created_at, kid");
        let all = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant.as_str()).fetch_all(&self.pool).await?;
        all.iter().map(rows::stored_key).collect()
    }

    async fn apply_plan(
        &self,
        tenant: &TenantId,
        expected_version: i64,
        plan: &Plan,
        fresh: Option<&NewKey>,
        now: OffsetDateTime,
        events: &[AuditEvent],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        apply_plan_in(&mut tx, tenant, expected_version, plan, fresh, now).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_session(
        &self,
        session: &SessionRecord,
        refresh: &NewRefresh,
        access: &IssuedAccess,
        events: &[AuditEvent],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(sql::INSERT_SESSION)
            .bind(&session.id)
            .bind(session.tenant.as_str())
            .bind(&session.user_id)
            .bind(session.client_id.as_deref())
            .bind(session.scope.as_deref())
            .bind(session.audience.as_deref())
            .bind(session.claims.to_string())
            .bind(session.created_at)
            .bind(session.expires_at)
            .execute(&mut *tx)
            .await?;
        insert_refresh(&mut tx, &session.id, refresh, None).await?;
        record_access(&mut tx, session, access).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn refresh_session(
        &self,
        tenant: &TenantId,
        presented: &[u8; 32],
        now: OffsetDateTime,
        grace: time::Duration,
        refresh: &NewRefresh,
        access: &IssuedAccess,
        actor: &Actor,
        keep: RevocationKeep,
    ) -> Result<RefreshOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let found = sqlx::query(
            "SELECT r.session_id, r.expires_at, r.used_at, r.superseded_at FROM refresh_tokens r \
             JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = $1 AND s.tenant_id = $2 FOR UPDATE OF r, s",
        )
        .bind(presented.as_slice())
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(found) = found else {
            return Ok(RefreshOutcome::Rejected(RefreshRejection::Unknown));
        };
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(found.text("session_id")?).fetch_one(&mut *tx).await?;
        let mut session = rows::session(&row)?;
        let mut facts = PresentedRefresh {
            session_revoked: session.revoked_at.is_some(),
            superseded: found.ts_opt("superseded_at")?.is_some(),
            used_at: found.ts_opt("used_at")?,
            child_used: false,
            token_expires: found.ts("expires_at")?,
            session_expires: session.expires_at,
        };
        if facts.used_within(now, grace) {
            let used: i64 = sqlx::query_scalar(sql::CHILD_USED).bind(presented.as_slice()).fetch_one(&mut *tx).await?;
            facts.child_used = used > 0;
        }
        match facts.decide(now, grace) {
            RefreshDecision::SessionRevoked => return Ok(RefreshOutcome::Rejected(RefreshRejection::SessionRevoked)),
            RefreshDecision::Expired => return Ok(RefreshOutcome::Rejected(RefreshRejection::Expired)),
            RefreshDecision::Reuse => {
                sqlx::query(sql::REVOKE_SESSION_FOR_REUSE).bind(&session.id).bind(now).execute(&mut *tx).await?;
                let scope = SessionScope::Session(session.id.clone());
                let last = latest_exp(&mut tx, tenant, &scope).await?;
                let forget_after =
                    last.map_or(keep.at_least_until, |l| keep.at_least_until.max(l + keep.after_last_token));
                let revocation = Revocation::Session { sid: session.id.clone(), forget_after };
                insert_revocation(&mut tx, tenant, &revocation, now).await?;
                session.revoked_at = Some(now);
                insert_events(&mut tx, &rows::reuse_events(&session, actor, now)).await?;
                tx.commit().await?;
                return Ok(RefreshOutcome::Reused(session, forget_after));
            }
            RefreshDecision::Exchange { retry: true } => {
                sqlx::query(sql::SUPERSEDE_SIBLINGS).bind(presented.as_slice()).bind(now).execute(&mut *tx).await?;
            }
            RefreshDecision::Exchange { retry: false } => {}
        }
        sqlx::query(sql::MARK_REFRESH_USED).bind(presented.as_slice()).bind(now).execute(&mut *tx).await?;
        insert_refresh(&mut tx, &session.id, refresh, Some(presented)).await?;
        record_access(&mut tx, &session, access).await?;
        sqlx::query(sql::EXTEND_SESSION).bind(&session.id).bind(refresh.expires_at).execute(&mut *tx).await?;
        session.expires_at = session.expires_at.max(refresh.expires_at);
        insert_events(&mut tx, &[rows::refreshed_event(&session, actor, access)]).await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated(session))
    }

    async fn secret(&self, tenant: &TenantId, kid: &str) -> Result<Option<StoredSecret>, StoreError> {
        let sql = format!("SELECT {SECRET_COLUMNS} FROM hmac_secrets WHERE tenant_id = $1 AND kid = $2");
        let row =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant.as_str()).bind(kid).fetch_optional(&self.pool).await?;
        row.as_ref().map(rows::stored_secret).transpose()
    }

    async fn rotate_secret(
        &self,
        tenant: &TenantId,
        new: &NewSecret,
        previous_not_after: Option<OffsetDateTime>,
        now: OffsetDateTime,
        events: &[AuditEvent],
    ) -> Result<SecretRotation, StoreError> {
        let mut tx = self.pool.begin().await?;
        // First: on PostgreSQL the tenant row's lock queues a concurrent secret change.
        sqlx::query(sql::BUMP_VERSION).bind(tenant.as_str()).execute(&mut *tx).await?;
        sqlx::query(sql::RETIRE_PREVIOUS_SECRET).bind(tenant.as_str()).execute(&mut *tx).await?;
        let previous_kid: Option<String> = sqlx::query_scalar(
            "UPDATE hmac_secrets SET state = 'previous', not_after = $2 \
             WHERE tenant_id = $1 AND state = 'current' RETURNING kid",
        )
        .bind(tenant.as_str())
        .bind(previous_not_after)
        .fetch_optional(&mut *tx)
        .await?;
        insert_secret(&mut tx, tenant, new, SecretState::Current, None, now).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(SecretRotation { current_kid: new.kid.clone(), previous_kid })
    }

    async fn replace_secrets(
        &self,
        tenant: &TenantId,
        current: &NewSecret,
        previous: Option<(&NewSecret, Option<OffsetDateTime>)>,
        now: OffsetDateTime,
        events: &[AuditEvent],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // First: on PostgreSQL the tenant row's lock queues a concurrent secret change.
        sqlx::query(sql::BUMP_VERSION).bind(tenant.as_str()).execute(&mut *tx).await?;
        sqlx::query(sql::RETIRE_ALL_SECRETS).bind(tenant.as_str()).execute(&mut *tx).await?;
        insert_secret(&mut tx, tenant, current, SecretState::Current, None, now).await?;
        if let Some((previous, not_after)) = previous {
            insert_secret(&mut tx, tenant, previous, SecretState::Previous, not_after, now).await?;
        }
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_sessions(
        &self,
        tenant: &TenantId,
        scope: &SessionScope,
        revocation: &Revocation,
        now: OffsetDateTime,
        events: &[AuditEvent],
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (statement, subject) = match scope {
            SessionScope::All => (sql::REVOKE_ALL_SESSIONS, ""),
            SessionScope::User(user) => (sql::REVOKE_USER_SESSIONS, user.as_str()),
            SessionScope::Session(sid) => {
                let found: i64 =
                    sqlx::query_scalar(sql::SESSION_EXISTS).bind(tenant.as_str()).bind(sid).fetch_one(&mut *tx).await?;
                if found == 0 {
                    return Err(StoreError::NotFound);
                }
                (sql::REVOKE_ONE_SESSION, sid.as_str())
            }
        };
        let done = sqlx::query(statement).bind(tenant.as_str()).bind(now).bind(subject).execute(&mut *tx).await?;
        insert_revocation(&mut tx, tenant, revocation, now).await?;
        let count = done.rows_affected();
        let events: Vec<AuditEvent> =
            events.iter().map(|e| rows::session_revoked_event(tenant, scope, count, e)).collect();
        insert_events(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(count)
    }

    async fn revoke_token(
        &self,
        tenant: &TenantId,
        revocation: &Revocation,
        now: OffsetDateTime,
        events: &[AuditEvent],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_revocation(&mut tx, tenant, revocation, now).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn latest_token_exp(
        &self,
        tenant: &TenantId,
        scope: &SessionScope,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        latest_exp(&mut conn, tenant, scope).await
    }

    async fn token_expiry(&self, tenant: &TenantId, jti: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        let row = sqlx::query(sql::TOKEN_EXPIRY).bind(tenant.as_str()).bind(jti).fetch_optional(&self.pool).await?;
        row.map(|r| r.ts("expires_at")).transpose()
    }

    async fn live_revocations(&self, tenant: &TenantId, now: OffsetDateTime) -> Result<Vec<Revocation>, StoreError> {
        let all = sqlx::query(sql::LIVE_REVOCATIONS).bind(tenant.as_str()).bind(now).fetch_all(&self.pool).await?;
        all.iter().map(rows::revocation).collect()
    }

    async fn audit_page(
        &self,
        tenant: &TenantId,
        from: OffsetDateTime,
        to: OffsetDateTime,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE tenant_id = $1 AND at >= $2 AND at < $3 AND id > $4 \
             ORDER BY id LIMIT $5"
        );
        let all = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(from)
            .bind(to)
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        all.iter().map(rows::audit_record).collect()
    }

    async fn key_usage(
        &self,
        tenant: &TenantId,
        kid: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
        limit: i64,
    ) -> Result<KeyUsage, StoreError> {
        let mut tx = self.pool.begin().await?;
        let tokens: i64 = sqlx::query_scalar(sql::KEY_USAGE_TOTAL)
            .bind(tenant.as_str())
            .bind(kid)
            .bind(from)
            .bind(to)
            .fetch_one(&mut *tx)
            .await?;
        let rows = sqlx::query(sql::KEY_USAGE_SESSIONS)
            .bind(tenant.as_str())
            .bind(kid)
            .bind(from)
            .bind(to)
            .bind(limit + 1)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut sessions = rows.iter().map(rows::session_usage).collect::<Result<Vec<_>, _>>()?;
        let truncated = sessions.len() as i64 > limit;
        sessions.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(KeyUsage { tokens, sessions, truncated })
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query(sql::ACQUIRE_LEASE).bind(name).bind(holder).bind(now).bind(until).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn purge(&self, expired_before: OffsetDateTime, ledger_before: OffsetDateTime) -> Result<Purged, StoreError> {
        let mut tx = self.pool.begin().await?;
        let refresh_tokens =
            sqlx::query(sql::PURGE_REFRESH).bind(expired_before).execute(&mut *tx).await?.rows_affected();
        let revocations =
            sqlx::query(sql::PURGE_REVOCATIONS).bind(expired_before).execute(&mut *tx).await?.rows_affected();
        let access_tokens = sqlx::query(sql::PURGE_ACCESS).bind(ledger_before).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(Purged { refresh_tokens, revocations, access_tokens })
    }

    async fn sealed_items(&self) -> Result<Vec<SealedItem>, StoreError> {
        let mut items = Vec::new();
        for (statement, kind) in [(sql::SEALED_KEYS, SealedKind::Key), (sql::SEALED_SECRETS, SealedKind::Secret)] {
            for row in sqlx::query(statement).fetch_all(&self.pool).await? {
                items.push(rows::sealed_item(&row, kind)?);
            }
        }
        Ok(items)
    }

    async fn rewrap(&self, item: &SealedItem, new: &Sealed) -> Result<bool, StoreError> {
        let statement = match item.kind {
            SealedKind::Key => sql::REWRAP_KEY,
            SealedKind::Secret => sql::REWRAP_SECRET,
        };
        let done = sqlx::query(statement)
            .bind(item.tenant.as_str())
            .bind(&item.id)
            .bind(&new.kek_id)
            .bind(&new.wrapped_dek)
            .bind(&item.sealed.kek_id)
            .bind(&item.sealed.wrapped_dek)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }
}
