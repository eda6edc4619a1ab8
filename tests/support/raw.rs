//! A connection to a test database that goes around the store, for what the `Store` trait
//! deliberately does not offer: reading the audit trail back, looking at the bytes stored at
//! rest, and trying to break an invariant behind the store's back to see the database
//! refuse.
//!
//! The only place in the tests that knows table and column names.

use sqlx::{Connection, PgConnection, Row, SqliteConnection};
use time::OffsetDateTime;

use keyward::domain::AuditEvent;

use super::Backend;

pub enum RawConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

/// Runs `$body` with `$conn` bound to whichever connection `$raw` holds: the same source,
/// type-checked once per backend.
macro_rules! on_either {
    ($raw:expr, $conn:ident => $body:expr) => {
        match $raw {
            RawConnection::Postgres($conn) => $body,
            RawConnection::Sqlite($conn) => $body,
        }
    };
}

/// An audit event as stored, compared field by field with the [`AuditEvent`] written.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub at: OffsetDateTime,
    pub tenant_id: Option<String>,
    pub actor: String,
    pub kind: String,
    pub kid: Option<String>,
    pub session_id: Option<String>,
    pub user_id: Option<String>,
    pub ip: Option<String>,
    /// Parsed back from its text column; `None` when the event had no detail.
    pub detail: Option<serde_json::Value>,
}

impl From<&AuditEvent> for AuditRow {
    fn from(e: &AuditEvent) -> AuditRow {
        AuditRow {
            at: e.at,
            tenant_id: e.tenant.as_ref().map(|t| t.as_str().to_owned()),
            actor: e.actor.clone(),
            kind: e.kind.as_str().to_owned(),
            kid: e.kid.clone(),
            session_id: e.session_id.clone(),
            user_id: e.user_id.clone(),
            ip: e.ip.clone(),
            detail: (!e.detail.is_null()).then(|| e.detail.clone()),
        }
    }
}

/// A key's row as stored, private half included: exactly the bytes at rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub kek_id: String,
    pub wrapped_dek: Vec<u8>,
    pub private_key: Vec<u8>,
}

/// `at` as integer microseconds on both backends (SQLite stores it that way).
const PG_AUDIT_SQL: &str = "SELECT CAST(EXTRACT(EPOCH FROM at) * 1000000 AS BIGINT) AS at_us, tenant_id, actor, type, \
     kid, session_id, user_id, ip, detail FROM audit_events ORDER BY id";
const SQLITE_AUDIT_SQL: &str =
    "SELECT at AS at_us, tenant_id, actor, type, kid, session_id, user_id, ip, detail FROM audit_events ORDER BY id";

impl RawConnection {
    pub async fn connect(backend: Backend, url: &str) -> RawConnection {
        match backend {
            Backend::Postgres => RawConnection::Postgres(PgConnection::connect(url).await.expect("raw connection")),
            Backend::Sqlite => RawConnection::Sqlite(SqliteConnection::connect(url).await.expect("raw connection")),
        }
    }

    /// Runs one statement with text parameters (`$1`, `$2`, ...) and returns the number of
    /// rows it changed, or the database's error as it is.
    pub async fn execute(&mut self, sql: &'static str, params: &[&str]) -> Result<u64, sqlx::Error> {
        on_either!(self, conn => {
            let mut query = sqlx::query(sql);
            for param in params {
                query = query.bind(*param);
            }
            query.execute(&mut *conn).await.map(|done| done.rows_affected())
        })
    }

    /// The single integer a query such as `SELECT COUNT(*) ...` returns.
    pub async fn count(&mut self, sql: &'static str, params: &[&str]) -> i64 {
        on_either!(self, conn => {
            let mut query = sqlx::query_scalar::<_, i64>(sql);
            for param in params {
                query = query.bind(*param);
            }
            query.fetch_one(&mut *conn).await.expect("count query")
        })
    }

    /// Every audit event, in the order written.
    pub async fn audit_events(&mut self) -> Vec<AuditRow> {
        let sql = match self {
            RawConnection::Postgres(_) => PG_AUDIT_SQL,
            RawConnection::Sqlite(_) => SQLITE_AUDIT_SQL,
        };
        on_either!(self, conn => {
            let rows = sqlx::query(sql).fetch_all(&mut *conn).await.expect("audit_events query");
            rows.iter()
                .map(|row| AuditRow {
                    at: from_micros(row.get("at_us")),
                    tenant_id: row.get("tenant_id"),
                    actor: row.get("actor"),
                    kind: row.get("type"),
                    kid: row.get("kid"),
                    session_id: row.get("session_id"),
                    user_id: row.get("user_id"),
                    ip: row.get("ip"),
                    detail: row
                        .get::<Option<String>, _>("detail")
                        .map(|text| serde_json::from_str(&text).expect("audit detail is JSON")),
                })
                .collect()
        })
    }

    pub async fn audit_count(&mut self) -> i64 {
        self.count("SELECT COUNT(*) FROM audit_events", &[]).await
    }

    /// The stored row of one key; panics if there is none.
    pub async fn key_row(&mut self, tenant: &str, kid: &str) -> KeyRow {
        on_either!(self, conn => {
            let row = sqlx::query("SELECT kek_id, wrapped_dek, private_key FROM keys WHERE tenant_id = $1 AND kid = $2")
                .bind(tenant)
                .bind(kid)
                .fetch_one(&mut *conn)
                .await
                .expect("key row");
            KeyRow { kek_id: row.get("kek_id"), wrapped_dek: row.get("wrapped_dek"), private_key: row.get("private_key") }
        })
    }
}

fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).expect("timestamp in range")
}
