//! Support for the rotation tests (issue 5): a deterministic simulation of the key schedule
//! over the pure planner and the real snapshot and verifier code ([`simulate`]), relying
//! parties that cache the JWKS exactly as long as `Cache-Control` allows ([`RelyingParty`]),
//! an application on a manual clock whose use cases a test can call between requests
//! ([`ServedApp`]), and replicas without a server ([`replica`]).
//!
//! The simulation is here rather than in its test so the test reads as the specification:
//! what is run (a config) and what must hold (the report).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use keyward::clock::{Clock, ManualClock};
use keyward::config::Settings;
use keyward::crypto::{MasterKeys, PublicJwk, Sealed, SigningKey, generate};
use keyward::domain::{
    Actor, Key, KeyRef, KeyState, Period, Plan, Policy, PolicyPatch, SigningAlg, Tenant, TenantId, rotate, schedule,
};
use keyward::http::AppState;
use keyward::keyset::{TenantKeys, key_owner};
use keyward::service::{KeyService, NewTenant};
use keyward::startup::{Application, Services};
use keyward::store::{LoadedTenant, StoredKey};
use keyward::token::jws;
use keyward::token::verify::{Rules, check};
use reqwest::Client;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::TestDatabase;
use super::raw::AuditRow;

// ------------------------------------------------------------------------ randomness

/// SplitMix64: a few lines, no dependency, and the same sequence for the same seed, so a
/// failing simulation fails again the same way.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration in `[0, max]`, to the millisecond.
    pub fn up_to(&mut self, max: time::Duration) -> time::Duration {
        let ms = u64::try_from(max.whole_milliseconds()).expect("a positive duration");
        time::Duration::milliseconds(i64::try_from(self.next_u64() % (ms + 1)).expect("in range"))
    }
}

// -------------------------------------------------------------------------- policies

pub fn period(text: &str) -> Period {
    text.parse().unwrap_or_else(|e| panic!("period {text}: {e:?}"))
}

/// A rotation policy as the admin API takes it (`"90d"`, `"2d"`, ...).
pub fn policy(rotation_period: &str, stage_lead: &str, overlap: &str, access_token_ttl: &str) -> Policy {
    Policy {
        signing_alg: SigningAlg::Es256,
        rotation_period: period(rotation_period),
        overlap: period(overlap),
        stage_lead: period(stage_lead),
        access_token_ttl: period(access_token_ttl),
        refresh_token_ttl: period("30d"),
    }
}

/// An hour-long cycle that passes validation with the default 5-minute JWKS max-age:
/// staged at 50 min, active at 60 min, retired keys expire 20 min after retiring.
pub fn hourly() -> Policy {
    policy("1h", "10m", "20m", "15m")
}

/// `POST /admin/tenants` body for tenant `id` with `policy`.
pub fn tenant_body(id: &str, policy: &Policy) -> Value {
    json!({
        "id": id,
        "signing_alg": policy.signing_alg.as_str(),
        "rotation_period": policy.rotation_period.to_string(),
        "stage_lead": policy.stage_lead.to_string(),
        "overlap": policy.overlap.to_string(),
        "access_token_ttl": policy.access_token_ttl.to_string(),
    })
}

// ------------------------------------------------------------------------ simulation

/// Where every simulation starts (a multiple of any tick, so due times fall on ticks).
pub const SIM_START: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

/// Tokens a rotation could touch (a key changed within this long before they were issued)
/// are checked end to end, signature included.
const FULL_CHECK_WINDOW: time::Duration = time::Duration::minutes(30);

pub struct SimConfig {
    pub policy: Policy,
    pub jwks_max_age: time::Duration,
    pub leeway: Period,
    /// How often the rotation loop runs (`KEYWARD_ROTATION_INTERVAL`).
    pub tick: time::Duration,
    /// One token is issued this often, as long as the simulation runs.
    pub issue_every: time::Duration,
    pub run_for: time::Duration,
    pub seed: u64,
    /// Besides tokens near a key change, every n-th token is checked end to end.
    pub full_check_every: u64,
}

#[derive(Debug, Default)]
pub struct SimReport {
    pub tokens: u64,
    pub ticks: u64,
    /// Tokens signed for real and verified by Keyward's verifier and by an independent JWT
    /// library holding the relying party's cached JWKS.
    pub fully_checked: u64,
    pub jwks_fetches: u64,
    /// Tokens whose kid was missing from a relying party's cached JWKS.
    pub unknown_kids: u64,
    /// Tokens Keyward would have refused although they had not expired.
    pub false_rejections: u64,
    /// The first few failures, described.
    pub examples: Vec<String>,
    /// Every key change: (key number in order of creation from 1, state entered, time since
    /// the start). A fresh key enters `Staged` first.
    pub timeline: Vec<(usize, KeyState, time::Duration)>,
    pub max_published: usize,
    /// When each key's last token expired, by key number.
    pub last_token_exp: HashMap<usize, time::Duration>,
}

impl SimReport {
    fn fail(&mut self, what: String) {
        if self.examples.len() < 10 {
            self.examples.push(what);
        }
    }

    /// The timeline of key `n` alone: (state, time since start).
    pub fn key(&self, n: usize) -> Vec<(KeyState, time::Duration)> {
        self.timeline.iter().filter(|(k, _, _)| *k == n).map(|(_, s, at)| (*s, *at)).collect()
    }
}

/// What Keyward served from one instant on: the snapshot (JWKS bytes, verifying keys).
struct Served {
    from: OffsetDateTime,
    snapshot: Arc<TenantKeys>,
    /// The kids of `snapshot.jwks`, parsed from the bytes a relying party receives.
    kids: BTreeSet<String>,
}

/// A key's material: what is stored (public half, sealed private half) and, for the
/// simulation's own signing, the parsed key pair.
struct Material {
    public: PublicJwk,
    sealed: Sealed,
    signer: SigningKey,
}

/// A tenant's keys as the database holds them, plus what Keyward serves from them.
struct World {
    tenant: Tenant,
    leeway: Period,
    master: MasterKeys,
    /// The rows: what the planner reads and the store writes (`last_token_exp` included).
    keys: Vec<Key>,
    material: HashMap<String, Material>,
    number: HashMap<String, usize>,
    version: i64,
    /// Snapshots in the order they were installed; the last one is current.
    served: Vec<Served>,
    last_change: OffsetDateTime,
    timeline: Vec<(usize, KeyState, time::Duration)>,
}

impl World {
    /// A tenant created at `now` the way the service creates one: a fresh key, activated.
    fn create(policy: &Policy, leeway: Period, now: OffsetDateTime) -> World {
        let spec = MasterKeys::generate_spec("sim").expect("a master key");
        let tenant = Tenant {
            id: TenantId::parse("acme").expect("tenant id"),
            issuer: "https://keys.example.com/a/acme".into(),
            audiences: vec!["acme".into()],
            policy: policy.clone(),
            created_at: now,
            updated_at: now,
        };
        let mut world = World {
            tenant,
            leeway,
            master: MasterKeys::parse(&spec).expect("the master key"),
            keys: Vec::new(),
            material: HashMap::new(),
            number: HashMap::new(),
            version: 0,
            served: Vec::new(),
            last_change: now,
            timeline: Vec::new(),
        };
        world.apply(&rotate(&[], policy.signing_alg, false), now);
        world
    }

    fn current(&self) -> &Served {
        self.served.last().expect("a snapshot since the tenant was created")
    }

    /// What was served just before `at` (the stalest copy a cache may hold at `at + max-age`).
    fn served_before(&self, at: OffsetDateTime) -> &Served {
        let i = self.served.partition_point(|s| s.from < at);
        &self.served[i.saturating_sub(1)]
    }

    /// One run of the rotation loop for this tenant.
    fn tick(&mut self, now: OffsetDateTime) {
        let plan = schedule(&self.keys, &self.tenant.policy, now, self.leeway);
        if plan.is_empty() {
            return;
        }
        self.apply(&plan, now);
        let again = schedule(&self.keys, &self.tenant.policy, now, self.leeway);
        assert!(again.is_empty(), "a second tick at {now} found more to do: {again:?}");
    }

    /// Applies a plan as the store does (all or nothing), then installs a new snapshot as
    /// the service does after every change.
    fn apply(&mut self, plan: &Plan, now: OffsetDateTime) {
        let fresh = plan.fresh.map(|alg| self.mint(alg));
        plan.apply(&mut self.keys, now, fresh.as_deref()).expect("a plan computed from the current keys applies");
        let since = now - SIM_START;
        if let Some(kid) = &fresh {
            self.timeline.push((self.number[kid], KeyState::Staged, since));
        }
        for t in &plan.transitions {
            let kid = match &t.key {
                KeyRef::Existing(kid) => kid,
                KeyRef::Fresh => fresh.as_ref().expect("a fresh kid"),
            };
            self.timeline.push((self.number[kid], t.to, since));
        }
        let active = self.keys.iter().filter(|k| k.state == KeyState::Active).count();
        assert_eq!(active, 1, "exactly one active key after the change at {now}: {:?}", self.keys);
        self.version += 1;
        self.last_change = now;
        let stored = self
            .keys
            .iter()
            .map(|k| {
                let m = &self.material[&k.kid];
                StoredKey { meta: k.clone(), public: m.public.clone(), sealed: m.sealed.clone() }
            })
            .collect();
        let loaded = LoadedTenant { tenant: self.tenant.clone(), version: self.version, keys: stored, secrets: vec![] };
        let snapshot = TenantKeys::build(loaded, &self.master).expect("a snapshot of the current keys");
        let doc: Value = serde_json::from_slice(&snapshot.jwks.body).expect("the JWKS is JSON");
        let kids = super::app::kids_of(&doc["keys"]).into_iter().collect();
        self.served.push(Served { from: now, snapshot: Arc::new(snapshot), kids });
    }

    /// Generates a key, seals its private half and returns its kid.
    fn mint(&mut self, alg: SigningAlg) -> String {
        let generated = generate(alg).expect("key generation");
        let kid = generated.public.kid.clone();
        let sealed =
            self.master.seal(generated.private.as_bytes(), key_owner(&self.tenant.id, &kid)).expect("sealing a key");
        let signer = SigningKey::from_pkcs8(&kid, alg, &generated.private).expect("parsing the new key");
        self.material.insert(kid.clone(), Material { public: generated.public, sealed, signer });
        let n = self.number.len() + 1;
        self.number.insert(kid.clone(), n);
        kid
    }

    /// The store's `ADVANCE_LAST_TOKEN_EXP`: the row moves, the snapshot does not.
    fn signed(&mut self, kid: &str, exp: OffsetDateTime) {
        let key = self.keys.iter_mut().find(|k| k.kid == kid).expect("the signing key's row");
        key.last_token_exp = Some(key.last_token_exp.map_or(exp, |e| e.max(exp)));
    }
}

/// A token on its way to a relying party: (received at, serial, kid, issued at).
type InFlight = Reverse<(OffsetDateTime, u64, String, OffsetDateTime)>;

/// A relying party's cached JWKS: which snapshot it fetched, and when.
struct Cache {
    fetched_at: OffsetDateTime,
    served: usize,
}

/// Runs the schedule on the pure planner, tick by tick, while tokens are issued by the
/// active key and received by a relying party after a random delay up to their lifetime.
/// Each token is judged three ways when it arrives:
/// - a relying party that refetches the JWKS only when its copy is older than max-age
///   must find the kid in its copy;
/// - so must the stalest copy any relying party honouring max-age could hold (the JWKS as
///   served max-age before arrival);
/// - Keyward's current snapshot must still accept the key (the token has not expired).
///
/// Tokens near a key change, and every n-th, are also signed for real and verified by
/// Keyward's verifier and by `jsonwebtoken` with the relying party's cached JWK.
pub fn simulate(cfg: &SimConfig) -> SimReport {
    let ttl = cfg.policy.access_token_ttl.as_duration();
    let mut world = World::create(&cfg.policy, cfg.leeway, SIM_START);
    let mut report = SimReport::default();
    let mut rng = Rng::new(cfg.seed);
    let mut in_flight: BinaryHeap<InFlight> = BinaryHeap::new();
    let mut cache = Cache { fetched_at: SIM_START, served: 0 };
    let end = SIM_START + cfg.run_for;
    let (mut now, mut next_issue) = (SIM_START, SIM_START);
    while now < end || !in_flight.is_empty() {
        world.tick(now);
        report.ticks += 1;
        if now < end && now >= next_issue {
            let kid = world.current().snapshot.active_kid().expect("an active key").to_owned();
            world.signed(&kid, now + ttl);
            in_flight.push(Reverse((now + rng.up_to(ttl), report.tokens, kid, now)));
            report.tokens += 1;
            next_issue += cfg.issue_every;
        }
        // The key set is constant until the next tick; a token arriving exactly at the next
        // tick is judged after it (the order less favourable to the token).
        let next_tick = now + cfg.tick;
        while in_flight.peek().is_some_and(|Reverse((at, ..))| *at < next_tick) {
            let Some(Reverse((at, serial, kid, iat))) = in_flight.pop() else { break };
            if at - cache.fetched_at > cfg.jwks_max_age {
                cache = Cache { fetched_at: at, served: world.served.len() - 1 };
                report.jwks_fetches += 1;
            }
            let token = Arrival { serial, kid, iat, exp: iat + ttl, at };
            judge(&world, cfg, &cache, &token, &mut report);
        }
        now = next_tick;
    }
    report.timeline = world.timeline.clone();
    for key in &world.keys {
        if let Some(exp) = key.last_token_exp {
            report.last_token_exp.insert(world.number[&key.kid], exp - SIM_START);
        }
    }
    report.max_published = world.served.iter().map(|s| s.kids.len()).max().unwrap_or(0);
    report
}

struct Arrival {
    serial: u64,
    kid: String,
    iat: OffsetDateTime,
    exp: OffsetDateTime,
    at: OffsetDateTime,
}

fn judge(world: &World, cfg: &SimConfig, cache: &Cache, token: &Arrival, report: &mut SimReport) {
    let Arrival { serial, kid, iat, exp, at } = token;
    let days = |t: &OffsetDateTime| (*t - SIM_START).as_seconds_f64() / 86_400.0;
    let cached = &world.served[cache.served];
    if !cached.kids.contains(kid) {
        report.unknown_kids += 1;
        report.fail(format!(
            "token {serial} (kid {kid}) at day {:.4}: not in the JWKS cached at day {:.4}",
            days(at),
            days(&cache.fetched_at)
        ));
    }
    let stalest = world.served_before(*at - cfg.jwks_max_age);
    if !stalest.kids.contains(kid) {
        report.unknown_kids += 1;
        report
            .fail(format!("token {serial} (kid {kid}) at day {:.4}: not in the JWKS served max-age earlier", days(at)));
    }
    let current = world.current();
    let verdict = match current.snapshot.keys.get(kid) {
        None => Err("unknown_kid".to_owned()),
        Some(entry) => entry
            .meta
            .usable_for_verification(*at, cfg.policy.overlap, cfg.leeway)
            .map_err(|e| format!("{e:?} (key {:?})", entry.meta.state)),
    };
    if let Err(why) = verdict {
        report.false_rejections += 1;
        report.fail(format!(
            "token {serial} issued day {:.4}, expiring day {:.4}, refused at day {:.4}: {why}",
            days(iat),
            days(exp),
            days(at)
        ));
    }
    let near_change = world.last_change >= *iat - FULL_CHECK_WINDOW;
    if near_change || serial % cfg.full_check_every == 0 {
        report.fully_checked += 1;
        if let Err(why) = verify_for_real(world, cfg, cached, token) {
            report.false_rejections += 1;
            report.fail(format!("token {serial} at day {:.4}, checked end to end: {why}", days(at)));
        }
    }
}

/// Signs the token with its key and verifies it with Keyward's verifier (on the current
/// snapshot) and with `jsonwebtoken` (with the JWK from the relying party's cached JWKS).
fn verify_for_real(world: &World, cfg: &SimConfig, cached: &Served, token: &Arrival) -> Result<(), String> {
    let tenant = &world.tenant;
    let claims = json!({
        "iss": tenant.issuer, "sub": "alice", "aud": tenant.audiences[0],
        "iat": token.iat.unix_timestamp(), "exp": token.exp.unix_timestamp(), "jti": token.serial.to_string(),
    });
    let signed = jws::sign(&world.material[&token.kid].signer, "at+jwt", &claims).map_err(|e| e.to_string())?;
    let rules = Rules { now: token.at, leeway: cfg.leeway, audience: None };
    check(&world.current().snapshot, &signed, rules).map_err(|reason| format!("Keyward says {reason:?}"))?;

    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(&cached.snapshot.jwks.body).map_err(|e| format!("JWKS: {e}"))?;
    let jwk = set.find(&token.kid).ok_or("kid not in the cached JWKS")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| format!("JWK: {e}"))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    // The simulated clock is not the library's: expiry is judged by Keyward's check above.
    validation.validate_exp = false;
    validation.set_audience(&tenant.audiences);
    validation.set_issuer(&[&tenant.issuer]);
    jsonwebtoken::decode::<Value>(&signed, &key, &validation).map_err(|e| format!("the relying party says {e}"))?;
    Ok(())
}

// ------------------------------------------------------------ relying party over HTTP

/// A relying party that caches a tenant's JWKS for exactly the `max-age` the server's
/// `Cache-Control` gives, and refetches only when its copy is older than that. Its clock is
/// whatever `now` the test passes (simulated or real).
pub struct RelyingParty {
    client: Client,
    url: String,
    cached: Option<CachedJwks>,
    pub fetches: u64,
}

pub struct CachedJwks {
    pub fetched_at: OffsetDateTime,
    pub max_age: time::Duration,
    pub kids: BTreeSet<String>,
}

impl RelyingParty {
    pub fn new(base_url: &str, tenant: &str) -> RelyingParty {
        let client = Client::builder().no_proxy().timeout(StdDuration::from_secs(30)).build().expect("HTTP client");
        RelyingParty { client, url: format!("{base_url}{}", super::app::jwks_path(tenant)), cached: None, fetches: 0 }
    }

    /// The JWKS this relying party holds at `now`.
    pub async fn jwks_at(&mut self, now: OffsetDateTime) -> &CachedJwks {
        let fresh = self.cached.as_ref().is_some_and(|c| now - c.fetched_at <= c.max_age);
        if !fresh {
            self.cached = Some(self.fetch(now).await);
        }
        self.cached.as_ref().expect("a cached JWKS")
    }

    /// Whether the kid is in the JWKS this relying party holds at `now`.
    pub async fn knows(&mut self, kid: &str, now: OffsetDateTime) -> bool {
        self.jwks_at(now).await.kids.contains(kid)
    }

    async fn fetch(&mut self, now: OffsetDateTime) -> CachedJwks {
        let response = self.client.get(&self.url).send().await.expect("the JWKS request reached the server");
        assert_eq!(response.status(), reqwest::StatusCode::OK, "JWKS at {}", self.url);
        let cache_control =
            response.headers().get("cache-control").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let max_age = cache_control
            .split(',')
            .find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("no max-age in Cache-Control `{cache_control}`"));
        let body: Value = response.json().await.expect("the JWKS is JSON");
        self.fetches += 1;
        CachedJwks {
            fetched_at: now,
            max_age: time::Duration::seconds(max_age),
            kids: super::app::kids_of(&body["keys"]).into_iter().collect(),
        }
    }
}

// -------------------------------------------------- an application on a manual clock

/// The real `Application` on port 0, reading the time from a manual clock, with its state
/// at hand so a test can run the schedule (`state.keys.run_schedule`) and issue tokens
/// (`state.sessions.create`) exactly when it wants, between HTTP requests.
pub struct ServedApp {
    pub address: String,
    pub state: AppState,
    pub client: Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl ServedApp {
    pub async fn start(settings: Settings, clock: &ManualClock) -> ServedApp {
        let clock: Arc<dyn Clock> = Arc::new(clock.clone());
        let application = Application::build_with_clock(settings, clock)
            .await
            .unwrap_or_else(|e| panic!("the app did not start: {e:#}"));
        let (address, state) = (format!("http://127.0.0.1:{}", application.port()), application.state().clone());
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until_stopped(async {
            let _ = rx.await;
        }));
        let client = Client::builder().no_proxy().timeout(StdDuration::from_secs(30)).build().expect("HTTP client");
        ServedApp { address, state, client, shutdown: Some(tx), server: Some(server) }
    }

    /// `POST /a/{tenant}/verify`: the status and body.
    pub async fn verify(&self, tenant: &str, token: &str) -> (reqwest::StatusCode, Value) {
        let url = format!("{}/a/{tenant}/verify", self.address);
        let response = self.client.post(url).json(&json!({ "token": token })).send().await.expect("verify request");
        super::app::json(response).await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(StdDuration::from_secs(10), server).await;
        }
    }
}

impl Drop for ServedApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

// ------------------------------------------------------------- replicas, no server

/// The use cases of one replica (store, keys, rotator...) on `settings`, reading `clock`:
/// what `keyward serve` runs minus the HTTP server and background loops, so a test ticks
/// the rotation loop itself.
pub async fn replica(settings: &Settings, clock: &ManualClock) -> Services {
    Services::build(settings, Arc::new(clock.clone())).await.unwrap_or_else(|e| panic!("replica: {e:#}"))
}

/// Creates tenant `id` with `policy` through the key service; returns its active kid.
pub async fn create_tenant(keys: &KeyService, id: &str, policy: &Policy) -> String {
    let new = NewTenant {
        id: TenantId::parse(id).expect("tenant id"),
        issuer: None,
        audiences: None,
        policy: PolicyPatch {
            signing_alg: Some(policy.signing_alg),
            rotation_period: Some(policy.rotation_period),
            overlap: Some(policy.overlap),
            stage_lead: Some(policy.stage_lead),
            access_token_ttl: Some(policy.access_token_ttl),
            refresh_token_ttl: Some(policy.refresh_token_ttl),
        },
    };
    let (_, kid) = keys.create_tenant(new, &Actor::system("test")).await.expect("creating the tenant");
    kid
}

/// The tenant's key rows, oldest first.
pub async fn key_rows(services: &Services, tenant: &str) -> Vec<Key> {
    let id = TenantId::parse(tenant).expect("tenant id");
    services.store.list_keys(&id).await.expect("listing keys").into_iter().map(|k| k.meta).collect()
}

/// Kids of the tenant's keys in `state`.
pub fn kids_in(keys: &[Key], state: KeyState) -> Vec<String> {
    keys.iter().filter(|k| k.state == state).map(|k| k.kid.clone()).collect()
}

/// Audit events of `kind` that the rotation loop wrote (their detail says `scheduled`).
pub async fn scheduled_events(db: &TestDatabase, kind: &str) -> Vec<AuditRow> {
    let rows = db.raw().await.audit_events().await;
    rows.into_iter().filter(|r| r.kind == kind && r.detail.as_ref().is_some_and(|d| d["scheduled"] == true)).collect()
}
