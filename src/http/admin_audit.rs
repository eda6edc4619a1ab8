//! `/a/{tenant}/admin/audit/export` (the audit trail, streamed in constant memory) and
//! `/a/{tenant}/admin/keys/{kid}/tokens` (what a key signed: the first question after a
//! key leak).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiQuery, tenant_id};
use crate::store::AuditRecord;

/// Events fetched per database round trip while streaming an export.
const PAGE: i64 = 1000;
/// The CSV header of the contract.
pub const CSV_HEADER: &str = "id,at,tenant,actor,type,kid,session_id,user_id,ip,detail\n";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/a/{tenant}/admin/audit/export", get(export))
        .route("/a/{tenant}/admin/keys/{kid}/tokens", get(key_tokens))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// RFC 3339; default: the beginning.
    from: Option<String>,
    /// RFC 3339, exclusive; default: now.
    to: Option<String>,
    /// `json` (default: one JSON array) or `csv`.
    format: Option<String>,
}

fn parse_time(name: &str, value: Option<&str>, default: OffsetDateTime) -> Result<OffsetDateTime, ApiError> {
    match value {
        None => Ok(default),
        Some(v) => OffsetDateTime::parse(v, &Rfc3339)
            .map_err(|_| ApiError::invalid(format!("`{name}` must be an RFC 3339 time, e.g. 2026-01-31T00:00:00Z"))),
    }
}

fn window(
    from: Option<&str>,
    to: Option<&str>,
    now: OffsetDateTime,
) -> Result<(OffsetDateTime, OffsetDateTime), ApiError> {
    let from = parse_time("from", from, OffsetDateTime::UNIX_EPOCH)?;
    let to = parse_time("to", to, now)?;
    if from > to {
        return Err(ApiError::invalid("`from` is after `to`"));
    }
    Ok((from, to))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

fn json_record(r: &AuditRecord) -> serde_json::Value {
    let detail = r.detail.as_deref().and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok());
    serde_json::json!({
        "id": r.id, "at": rfc3339(r.at), "tenant": r.tenant, "actor": r.actor, "type": r.kind, "kid": r.kid,
        "session_id": r.session_id, "user_id": r.user_id, "ip": r.ip, "detail": detail,
    })
}

/// One RFC 4180 field. Values a spreadsheet would run as a formula get a leading `'`.
fn csv_field(out: &mut String, value: &str) {
    let guarded = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let needs_quotes = guarded || value.contains([',', '"', '\n', '\r']);
    if !needs_quotes {
        out.push_str(value);
        return;
    }
    out.push('"');
    if guarded {
        out.push('\'');
    }
    out.push_str(&value.replace('"', "\"\""));
    out.push('"');
}

fn csv_record(r: &AuditRecord) -> String {
    let mut line = String::with_capacity(160);
    let at = rfc3339(r.at);
    let fields: [&str; 10] = [
        &r.id.to_string(),
        &at,
        r.tenant.as_deref().unwrap_or_default(),
        &r.actor,
        &r.kind,
        r.kid.as_deref().unwrap_or_default(),
        r.session_id.as_deref().unwrap_or_default(),
        r.user_id.as_deref().unwrap_or_default(),
        r.ip.as_deref().unwrap_or_default(),
        r.detail.as_deref().unwrap_or_default(),
    ];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        csv_field(&mut line, field);
    }
    line.push('\n');
    line
}

/// Where a streaming export is.
struct Cursor {
    after_id: i64,
    started: bool,
    done: bool,
    written: u64,
}

/// Export the audit trail of a tenant, oldest first, streamed.
#[utoipa::path(get, path = "/a/{tenant}/admin/audit/export", tag = "admin",
    params(("tenant" = String, Path), ExportQuery),
    responses((status = 200, description = "JSON array or CSV (header id,at,tenant,actor,type,kid,session_id,user_id,ip,detail)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub(crate) async fn export(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant_id(&tenant)?;
    state.keys.registry().get(tenant.as_str()).ok_or_else(|| ApiError::not_found("tenant"))?;
    let (from, to) = window(query.from.as_deref(), query.to.as_deref(), state.keys.now())?;
    let format = match query.format.as_deref() {
        None | Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some(_) => return Err(ApiError::invalid("`format` must be json or csv")),
    };
    let store = std::sync::Arc::clone(state.keys.store());
    let start = Cursor { after_id: 0, started: false, done: false, written: 0 };
    let stream = futures::stream::unfold(start, move |mut cursor| {
        let store = std::sync::Arc::clone(&store);
        let tenant = tenant.clone();
        async move {
            if cursor.done {
                return None;
            }
            let mut chunk = String::new();
            if !cursor.started {
                cursor.started = true;
                chunk.push_str(if format == Format::Csv { CSV_HEADER } else { "[" });
            }
            let page = match store.audit_page(&tenant, from, to, cursor.after_id, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    // Headers are gone already: ending the stream with an error aborts the
                    // response, so the client sees a truncated body, never a silent gap.
                    tracing::error!(error = %e, "audit export failed mid-stream");
                    cursor.done = true;
                    return Some((Err(std::io::Error::other("audit export failed")), cursor));
                }
            };
            for record in &page {
                match format {
                    Format::Csv => chunk.push_str(&csv_record(record)),
                    Format::Json => {
                        if cursor.written > 0 {
                            chunk.push(',');
                        }
                        chunk.push_str(&json_record(record).to_string());
                    }
                }
                cursor.written += 1;
                cursor.after_id = record.id;
            }
            if (page.len() as i64) < PAGE {
                cursor.done = true;
                if format == Format::Json {
                    chunk.push(']');
                }
            }
            Some((Ok(Bytes::from(chunk)), cursor))
        }
    });
    let (content_type, extension) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Json => ("application/json", "json"),
    };
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"keyward-audit.{extension}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// RFC 3339; default: the beginning.
    from: Option<String>,
    /// RFC 3339, exclusive; default: now.
    to: Option<String>,
    /// Most sessions listed (default 10000, at most 100000).
    limit: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionUsageBody {
    session_id: String,
    user_id: String,
    tokens: i64,
    #[serde(with = "time::serde::rfc3339")]
    last_exp: OffsetDateTime,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyTokens {
    kid: String,
    #[serde(with = "time::serde::rfc3339")]
    from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    to: OffsetDateTime,
    /// Access tokens the key signed in the window.
    tokens: i64,
    /// The sessions they belong to, latest expiry first.
    sessions: Vec<SessionUsageBody>,
    /// More sessions matched than `limit`.
    truncated: bool,
}

/// What a key signed in a window, by session: what an operator audits after a key leak.
#[utoipa::path(get, path = "/a/{tenant}/admin/keys/{kid}/tokens", tag = "admin",
    params(("tenant" = String, Path), ("kid" = String, Path), UsageQuery),
    responses((status = 200, body = KeyTokens), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub(crate) async fn key_tokens(
    State(state): State<AppState>,
    Path((tenant, kid)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<KeyTokens>, ApiError> {
    let tenant = tenant_id(&tenant)?;
    let snapshot = state.keys.registry().get(tenant.as_str()).ok_or_else(|| ApiError::not_found("tenant"))?;
    if !snapshot.keys.contains_key(&kid) {
        return Err(ApiError::not_found("key"));
    }
    let (from, to) = window(query.from.as_deref(), query.to.as_deref(), state.keys.now())?;
    let limit = query.limit.unwrap_or(10_000);
    if !(1..=100_000).contains(&limit) {
        return Err(ApiError::invalid("`limit` must be between 1 and 100000"));
    }
    let usage = state
        .keys
        .store()
        .key_usage(&tenant, &kid, from, to, limit)
        .await
        .map_err(crate::service::ServiceError::from)?;
    Ok(Json(KeyTokens {
        kid,
        from,
        to,
        tokens: usage.tokens,
        sessions: usage
            .sessions
            .into_iter()
            .map(|s| SessionUsageBody {
                session_id: s.session_id,
                user_id: s.user_id,
                tokens: s.tokens,
                last_exp: s.last_exp,
            })
            .collect(),
        truncated: usage.truncated,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(detail: Option<&str>, user: Option<&str>) -> AuditRecord {
        AuditRecord {
            id: 7,
            at: OffsetDateTime::UNIX_EPOCH,
            tenant: Some("acme".into()),
            actor: "admin:abcd1234".into(),
            kind: "key.revoked".into(),
            kid: Some("k1".into()),
            session_id: None,
            user_id: user.map(str::to_owned),
            ip: Some("127.0.0.1".into()),
            detail: detail.map(str::to_owned),
        }
    }

    #[test]
    fn csv_rows_follow_the_header_and_quote_what_needs_it() {
        let line = csv_record(&record(Some(r#"{"from":"active","note":"a,b"}"#), Some("alice")));
        assert_eq!(
            line,
            "7,1970-01-01T00:00:00Z,acme,admin:abcd1234,key.revoked,k1,,alice,127.0.0.1,\"{\"\"from\"\":\"\"active\"\",\"\"note\"\":\"\"a,b\"\"}\"\n"
        );
        assert_eq!(CSV_HEADER.matches(',').count(), line.matches(',').count() - 2, "two commas are inside quotes");
    }

    #[test]
    fn csv_fields_that_look_like_formulas_are_neutralised() {
        let line = csv_record(&record(None, Some("=HYPERLINK(\"x\")")));
        assert!(line.contains("\"'=HYPERLINK(\"\"x\"\")\""), "{line}");
    }

    #[test]
    fn json_records_carry_detail_as_an_object() {
        let v = json_record(&record(Some(r#"{"from":"active"}"#), None));
        assert_eq!(v["detail"]["from"], "active");
        assert_eq!(v["type"], "key.revoked");
        assert_eq!(v["at"], "1970-01-01T00:00:00Z");
    }
}
