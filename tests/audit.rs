//! The audit trail as operators read it (API.md "Administration"):
//! `GET /a/{tenant}/admin/audit/export` in CSV and JSON, oldest first, windowed by
//! `from` (inclusive) and `to` (exclusive), streamed in constant memory; and the events
//! the revocation calls leave in it.

mod support;

use std::sync::Arc;
use std::time::Instant;

use keyward::clock::ManualClock;
use keyward::config::Secret;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;

use support::TestDatabase;
use support::app::{
    ADMIN_HEADER, TestApp, assert_error, eventually, json, send, spawn_app, spawn_app_with, spawn_app_with_clock,
};
use support::replicas::faults::{DatabaseProxy, rss_kib};
use support::replicas::start_session;

support::backend_tests!(
    csv_export_has_the_contract_header_and_rows_oldest_first,
    json_export_is_one_array_of_the_same_events_in_the_same_order,
    export_window_includes_from_and_excludes_to,
    export_refuses_a_malformed_window_or_format,
    export_of_an_unknown_tenant_is_not_found,
    export_without_a_valid_admin_secret_is_unauthorized_and_audited,
    every_revocation_call_leaves_its_audit_event,
);

const CSV_HEADER: &str = "id,at,tenant,actor,type,kid,session_id,user_id,ip,detail";
const T0: OffsetDateTime = datetime!(2026-03-01 08:00 UTC);

fn export_path(tenant: &str, query: &str) -> String {
    format!("/a/{tenant}/admin/audit/export{query}")
}

async fn export_csv(app: &TestApp, tenant: &str, query: &str) -> String {
    let response = app.admin_get(&export_path(tenant, query)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    response.text().await.expect("CSV body")
}

async fn export_json(app: &TestApp, tenant: &str, query: &str) -> Vec<Value> {
    let (status, body) = json(app.admin_get(&export_path(tenant, query)).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().unwrap_or_else(|| panic!("the export is one JSON array: {body}")).clone()
}

/// The fields of one CSV record (RFC 4180: quoted fields, `""` inside quotes).
fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut field, mut quoted, mut chars) = (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// A tenant with a little history: created at T0, a session an hour later, that session
/// revoked another hour later; the clock then moves on so `to = now` covers everything.
async fn app_with_history(db: &TestDatabase) -> (TestApp, ManualClock, String) {
    let clock = ManualClock::new(T0);
    let app = spawn_app_with_clock(db, Arc::new(clock.clone())).await;
    app.create_tenant(json!({ "id": "acme" })).await;
    clock.advance(time::Duration::hours(1));
    let session = start_session(&app, "acme", "alice").await;
    clock.advance(time::Duration::hours(1));
    let path = "/a/acme/admin/revoke/sessions";
    let (status, body) = json(app.admin_post_json(path, &json!({ "session_id": session.session_id })).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    clock.advance(time::Duration::minutes(1));
    (app, clock, session.session_id)
}

async fn csv_export_has_the_contract_header_and_rows_oldest_first(db: TestDatabase) {
    let (app, _clock, session_id) = app_with_history(&db).await;

    let csv = export_csv(&app, "acme", "?format=csv").await;

    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(CSV_HEADER));
    let rows: Vec<Vec<String>> = lines.map(csv_fields).collect();
    assert!(rows.len() >= 4, "tenant, keys, session, revocation: {csv}");
    assert!(rows.iter().all(|r| r.len() == 10), "ten fields per row: {csv}");
    let ids: Vec<i64> = rows.iter().map(|r| r[0].parse().expect("numeric id")).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let times: Vec<OffsetDateTime> =
        rows.iter().map(|r| OffsetDateTime::parse(&r[1], &Rfc3339).expect("RFC 3339")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first: {times:?}");
    assert!(rows.iter().all(|r| r[2] == "acme"), "only the tenant's events: {csv}");
    assert_eq!(rows[0][4], "tenant.created");
    let revoked = rows.last().expect("a last row");
    assert_eq!((revoked[4].as_str(), revoked[6].as_str()), ("session.revoked", session_id.as_str()));
    assert_eq!(
        serde_json::from_str::<Value>(&revoked[9]).expect("detail is JSON"),
        json!({ "scope": "session", "revoked": 1 })
    );
    assert_eq!(
        db.raw().await.count("SELECT COUNT(*) FROM audit_events WHERE tenant_id = 'acme'", &[]).await,
        rows.len() as i64
    );
}

async fn json_export_is_one_array_of_the_same_events_in_the_same_order(db: TestDatabase) {
    let (app, _clock, _) = app_with_history(&db).await;

    let events = export_json(&app, "acme", "?format=json").await;

    let csv = export_csv(&app, "acme", "?format=csv").await;
    let csv_ids: Vec<String> = csv.lines().skip(1).map(|l| csv_fields(l)[0].clone()).collect();
    let json_ids: Vec<String> = events.iter().map(|e| e["id"].as_i64().expect("numeric id").to_string()).collect();
    assert_eq!(json_ids, csv_ids);
    for event in &events {
        let keys: Vec<&str> = event.as_object().expect("an object").keys().map(String::as_str).collect();
        for field in CSV_HEADER.split(',') {
            assert!(keys.contains(&field), "{field} missing in {event}");
        }
    }
    assert_eq!(export_json(&app, "acme", "").await, events, "JSON is the default format");
}

async fn export_window_includes_from_and_excludes_to(db: TestDatabase) {
    let (app, _clock, session_id) = app_with_history(&db).await;
    let window = |from: OffsetDateTime, to: OffsetDateTime| {
        format!("?format=json&from={}&to={}", from.format(&Rfc3339).unwrap(), to.format(&Rfc3339).unwrap())
    };

    let second_hour =
        export_json(&app, "acme", &window(T0 + time::Duration::hours(1), T0 + time::Duration::hours(2))).await;
    let third_hour =
        export_json(&app, "acme", &window(T0 + time::Duration::hours(2), T0 + time::Duration::hours(3))).await;
    let since =
        export_json(&app, "acme", &format!("?from={}", (T0 + time::Duration::hours(1)).format(&Rfc3339).unwrap()))
            .await;
    let until =
        export_json(&app, "acme", &format!("?to={}", (T0 + time::Duration::hours(1)).format(&Rfc3339).unwrap())).await;

    let types = |events: &[Value]| events.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(types(&second_hour), ["session.created"], "{second_hour:?}");
    assert_eq!(second_hour[0]["at"], "2026-03-01T09:00:00Z");
    assert_eq!(types(&third_hour), ["session.revoked"], "{third_hour:?}");
    assert_eq!(third_hour[0]["session_id"], session_id.as_str());
    assert_eq!(types(&since), ["session.created", "session.revoked"]);
    assert!(until.iter().all(|e| e["at"] == "2026-03-01T08:00:00Z") && !until.is_empty(), "{until:?}");
}

async fn export_refuses_a_malformed_window_or_format(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant(json!({ "id": "acme" })).await;

    for query in [
        "?from=yesterday",
        "?to=2026-13-01T00:00:00Z",
        "?from=2026-03-01",
        "?from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z",
        "?format=xml",
    ] {
        let response = app.admin_get(&export_path("acme", query)).await;
        let body = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(!body["message"].as_str().unwrap_or_default().is_empty(), "{query}");
    }
}

async fn export_of_an_unknown_tenant_is_not_found(db: TestDatabase) {
    let app = spawn_app(&db).await;

    assert_error(app.admin_get(&export_path("nobody", "?format=csv")).await, StatusCode::NOT_FOUND, "not_found").await;
}

async fn export_without_a_valid_admin_secret_is_unauthorized_and_audited(db: TestDatabase) {
    let app = spawn_app(&db).await;
    app.create_tenant(json!({ "id": "acme" })).await;

    let missing = send(app.request(Method::GET, &export_path("acme", "?format=csv"))).await;
    let wrong = send(app.request(Method::GET, &export_path("acme", "")).header(ADMIN_HEADER, "not-the-secret")).await;

    for response in [missing, wrong] {
        assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let refused = eventually("both refusals in the audit trail", || async {
        let events = export_json(&app, "acme", "").await;
        let refused: Vec<Value> = events.into_iter().filter(|e| e["type"] == "admin.unauthorized").collect();
        (refused.len() == 2).then_some(refused)
    })
    .await;
    assert_eq!(refused[0]["detail"]["secret_present"], false, "{refused:?}");
    assert_eq!(refused[1]["detail"]["secret_present"], true, "{refused:?}");
    assert!(refused.iter().all(|e| e["actor"] == "anonymous" && e["ip"] == "127.0.0.1"), "{refused:?}");
}

async fn every_revocation_call_leaves_its_audit_event(db: TestDatabase) {
    let app = spawn_app(&db).await;
    let leaked = app.create_tenant(json!({ "id": "acme" })).await["active_kid"].as_str().unwrap().to_owned();
    let one = start_session(&app, "acme", "alice").await;
    start_session(&app, "acme", "bob").await;
    start_session(&app, "acme", "bob").await;
    let token = start_session(&app, "acme", "carol").await;
    let revoke = |body: Value| {
        let app = &app;
        async move {
            let (status, answer) = json(app.admin_post_json("/a/acme/admin/revoke/sessions", &body).await).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
    };

    revoke(json!({ "session_id": one.session_id })).await;
    revoke(json!({ "user_id": "bob" })).await;
    let (status, _) =
        json(app.admin_post_json("/a/acme/admin/revoke/tokens", &json!({ "jti": token.jti })).await).await;
    assert_eq!(status, StatusCode::OK);
    let replacement = app.revoke_key("acme", &leaked).await["active_kid"].as_str().unwrap().to_owned();
    revoke(json!({})).await;

    let events = export_json(&app, "acme", "").await;
    let revocations: Vec<&Value> = events
        .iter()
        .filter(|e| ["session.revoked", "token.revoked", "key.revoked"].contains(&e["type"].as_str().unwrap()))
        .collect();
    let summary: Vec<(&str, &Value, &Value, &Value)> =
        revocations.iter().map(|e| (e["type"].as_str().unwrap(), &e["kid"], &e["session_id"], &e["user_id"])).collect();
    let null = &Value::Null;
    let (sid, bob, kid) = (&json!(one.session_id), &json!("bob"), &json!(leaked));
    assert_eq!(
        summary,
        [
            ("session.revoked", null, sid, null),
            ("session.revoked", null, null, bob),
            ("token.revoked", null, null, null),
            ("key.revoked", kid, null, null),
            ("session.revoked", null, null, null),
        ]
    );
    let details: Vec<&Value> = revocations.iter().map(|e| &e["detail"]).collect();
    assert_eq!(details[0], &json!({ "scope": "session", "revoked": 1 }));
    assert_eq!(details[1], &json!({ "scope": "user", "revoked": 2 }));
    assert_eq!(details[2]["jti"], token.jti.as_str(), "{}", details[2]);
    assert_eq!(details[4], &json!({ "scope": "tenant", "revoked": 1 }));
    for event in &revocations {
        assert!(event["actor"].as_str().unwrap().starts_with("admin:"), "{event}");
        assert_eq!(event["ip"], "127.0.0.1", "{event}");
    }
    let activated = events.iter().find(|e| e["type"] == "key.activated" && e["kid"] == replacement.as_str());
    assert!(activated.is_some(), "the replacement's activation is audited: {events:#?}");
}

// --------------------------------------------------------------------- 100k events

/// Counts CSV rows as they stream past, holding one line at most, and checks that ids
/// increase and times never go back.
#[derive(Default)]
struct CsvTally {
    partial: Vec<u8>,
    header: Option<String>,
    rows: u64,
    last: Option<(i64, OffsetDateTime)>,
}

impl CsvTally {
    fn feed(&mut self, mut chunk: &[u8]) {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&chunk[..end]);
            let line = String::from_utf8(std::mem::take(&mut self.partial)).expect("UTF-8 CSV");
            self.line(&line);
            chunk = &chunk[end + 1..];
        }
        self.partial.extend_from_slice(chunk);
    }

    fn line(&mut self, line: &str) {
        if self.header.is_none() {
            self.header = Some(line.to_owned());
            return;
        }
        let mut fields = line.splitn(3, ',');
        let id: i64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or_else(|| panic!("row without id: {line}"));
        let at =
            fields.next().and_then(|f| OffsetDateTime::parse(f, &Rfc3339).ok()).unwrap_or_else(|| panic!("{line}"));
        if let Some((last_id, last_at)) = self.last {
            assert!(id > last_id && at >= last_at, "row {id} at {at} after row {last_id} at {last_at}");
        }
        self.last = Some((id, at));
        self.rows += 1;
    }
}

/// Counts the elements of a streamed JSON array without parsing it into memory.
#[derive(Default)]
struct JsonTally {
    depth: u32,
    in_string: bool,
    escaped: bool,
    opened: bool,
    elements: u64,
}

impl JsonTally {
    fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'[' | b'{' => {
                    if self.depth == 0 {
                        assert!(b == b'[' && !self.opened, "the export is one array");
                        self.opened = true;
                    } else if self.depth == 1 {
                        assert_eq!(b, b'{', "an array of objects");
                        self.elements += 1;
                    }
                    self.depth += 1;
                }
                b']' | b'}' => self.depth -= 1,
                _ => {}
            }
        }
    }

    fn complete(&self) -> bool {
        self.opened && self.depth == 0 && !self.in_string
    }
}

/// Streams a response chunk by chunk into `feed`; returns the bytes seen and the peak RSS.
async fn stream(mut response: Response, mut feed: impl FnMut(&[u8])) -> (u64, u64) {
    let (mut bytes, mut peak) = (0u64, rss_kib());
    while let Some(chunk) = response.chunk().await.expect("the export streams to its end") {
        bytes += chunk.len() as u64;
        feed(&chunk);
        peak = peak.max(rss_kib());
    }
    (bytes, peak)
}

const BULK_EVENTS: i64 = 100_000;

/// One statement: 100k events of a tenant, a millisecond apart, ending before the tenant
/// is created through the API (so ids and times agree on "oldest first").
const INSERT_BULK: &str = "INSERT INTO audit_events (at, tenant_id, actor, type, session_id, user_id, ip, detail) \
    SELECT now() - INTERVAL '200 seconds' + g * INTERVAL '1 millisecond', $1, 'test:bulk', 'session.created', \
    'bulk-' || g, 'user-' || (g % 100), '127.0.0.1', '{\"n\":' || g || ',\"note\":\"a, b\"}' \
    FROM generate_series(1, 100000) AS g";

/// The app runs in this process, so its memory is this process's resident set (VmRSS).
/// The export is streamed chunk by chunk and only counted, so the test itself holds one
/// line at most; the peak RSS during the stream, minus the RSS before it, bounds what the
/// server (and the client) buffered. A server that built the body in memory would grow by
/// at least the body's size.
#[tokio::test]
async fn export_of_100k_events_streams_in_constant_memory() {
    let db = TestDatabase::postgres().await;
    let app = spawn_app(&db).await;
    let inserted = db.raw().await.execute(INSERT_BULK, &["bulk"]).await.expect("bulk insert");
    assert_eq!(inserted as i64, BULK_EVENTS);
    app.create_tenant(json!({ "id": "bulk" })).await;
    let total = db.raw().await.count("SELECT COUNT(*) FROM audit_events WHERE tenant_id = 'bulk'", &[]).await;
    assert!(total > BULK_EVENTS, "{total}");
    // Warm up the export path so the baseline includes its code and connection.
    let mut warm = CsvTally::default();
    stream(app.admin_get(&export_path("bulk", "?format=csv&to=2000-01-01T00:00:00Z")).await, |c| warm.feed(c)).await;

    for format in ["csv", "json"] {
        let before = rss_kib();
        let started = Instant::now();
        let response = app.admin_get(&export_path("bulk", &format!("?format={format}"))).await;
        assert_eq!(response.status(), StatusCode::OK);
        let (mut csv, mut json) = (CsvTally::default(), JsonTally::default());
        let (bytes, peak) = if format == "csv" {
            stream(response, |c| csv.feed(c)).await
        } else {
            stream(response, |c| json.feed(c)).await
        };
        let growth_kib = peak.saturating_sub(before);
        let (kib, took, share) = (bytes / 1024, started.elapsed(), growth_kib as f64 * 1024.0 * 100.0 / bytes as f64);
        eprintln!("{format} export: {total} events, {kib} KiB in {took:?}");
        eprintln!("  RSS {before} KiB before, peak {peak} KiB: growth {growth_kib} KiB ({share:.1}% of the body)");
        if format == "csv" {
            assert_eq!(csv.header.as_deref(), Some(CSV_HEADER));
            assert!(csv.partial.is_empty(), "the last row ends with a newline");
            assert_eq!(csv.rows as i64, total);
        } else {
            assert!(json.complete(), "the array is closed");
            assert_eq!(json.elements as i64, total);
        }
        assert!(bytes > 10 * 1024 * 1024, "{bytes} bytes: too small to tell streaming from buffering");
        assert!(growth_kib * 1024 < bytes / 2, "RSS grew by {growth_kib} KiB while streaming {bytes} bytes");
    }
}

/// Headers are sent before the last page is read, so a database failure mid-export cannot
/// become an error status: the body must then end in an error, never as a well-formed file
/// with rows missing.
#[tokio::test]
async fn export_cut_short_by_a_database_outage_ends_in_an_error_not_a_shorter_file() {
    let db = TestDatabase::postgres().await;
    let proxy = DatabaseProxy::start(&db).await;
    let app = spawn_app_with(&db, |s| s.database_url = Secret::new(proxy.url(&db))).await;
    db.raw().await.execute(INSERT_BULK, &["bulk"]).await.expect("bulk insert");
    app.create_tenant(json!({ "id": "bulk" })).await;

    for format in ["csv", "json"] {
        let mut response = app.admin_get(&export_path("bulk", &format!("?format={format}"))).await;
        assert_eq!(response.status(), StatusCode::OK);
        let first = response.chunk().await.expect("the first chunk").expect("a first chunk");
        proxy.cut();
        let mut bytes = first.len();
        let ending = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => bytes += chunk.len(),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        eprintln!("{format} export cut after {bytes} bytes: {ending:?}");
        assert!(ending.is_err(), "the {format} export ended cleanly after {bytes} bytes with the database gone");
        proxy.restore().await;
    }
}
