//! The in-process verification path, `Verifier::verify`, beside the raw aws-lc-rs
//! signature check it is built around, for every algorithm Keyward verifies.
//!
//! Per algorithm, in one criterion group (so every figure of a row comes from the same run):
//! - `raw_parsed_key`: `ParsedPublicKey::verify_sig` with a key parsed once — the best a
//!   verifier can do per token (for HS256: `hmac::verify` with a prepared key);
//! - `raw_unparsed_key`: `UnparsedPublicKey::verify`, which parses the key on every call
//!   (what a naive verifier pays; not measured for HS256);
//! - `jws_parse`: splitting and decoding the token, the work a miss adds to the raw check;
//! - `verifier_miss`: `Verifier::verify` with the cache disabled (capacity 0): parse, key
//!   lookup and state, signature, claims, revocation, metrics;
//! - `verifier_hit`: `Verifier::verify` of a token already in the cache.
//!
//! The state is built without a database: tenants, keys and secrets are made here, sealed
//! under a fresh master key and installed into a [`Registry`] exactly as the store's rows
//! would be. Every measured call is asserted to succeed once before it is measured: a
//! benchmark of an error path would be worthless.
//!
//! Run: `cargo bench --bench verify` (add a filter, e.g. `-- ES256`, for one algorithm).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ED25519, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
    UnparsedPublicKey, VerificationAlgorithm,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use time::OffsetDateTime;

use keyward::clock::{Clock, SystemClock};
use keyward::crypto::{MasterKeys, PublicJwk, generate};
use keyward::domain::{Key, KeyState, Period, Policy, SigningAlg, Tenant, TenantId};
use keyward::keyset::{Registry, TenantKeys, key_owner, secret_owner};
use keyward::metrics::Metrics;
use keyward::store::{LoadedTenant, SecretState, StoredKey, StoredSecret};
use keyward::token::Verifier;
use keyward::token::cache::VerifiedCache;
use keyward::token::jws;
use keyward::token::revocation::{Revocations, new_session_id};

/// The audience every benchmark token carries and every tenant accepts.
const AUDIENCE: &str = "api";
/// A realistic legacy shared secret (`JWT_SECRET`): 48 ASCII bytes.
const HS256_SECRET: &str = "bench-only-shared-secret-0123456789abcdefghijklm";

/// What one algorithm's row needs: the token, what the raw check sees, and two verifiers
/// over the same registry (one without cache, one with a warm cache).
struct Case {
    name: &'static str,
    tenant: String,
    token: String,
    /// `base64url(header) "." base64url(payload)`: what the signature covers.
    message: Vec<u8>,
    signature: Vec<u8>,
    raw: Raw,
    miss: Verifier,
    hit: Verifier,
}

enum Raw {
    Asymmetric {
        parsed: ParsedPublicKey,
        algorithm: &'static dyn VerificationAlgorithm,
        public: Vec<u8>,
    },
    /// Boxed: an HMAC key holds its precomputed inner and outer hash states (over 1 KiB).
    Hmac(Box<hmac::Key>),
}

fn period(s: &str) -> Period {
    s.parse().unwrap_or_else(|e| panic!("period {s}: {e:?}"))
}

fn tenant(id: &str, alg: SigningAlg, now: OffsetDateTime) -> Tenant {
    Tenant {
        id: TenantId::parse(id).expect("tenant id"),
        issuer: format!("https://keys.example.com/a/{id}"),
        audiences: vec![AUDIENCE.to_owned()],
        policy: Policy {
            signing_alg: alg,
            rotation_period: period("90d"),
            overlap: period("7d"),
            stage_lead: period("2d"),
            access_token_ttl: period("15m"),
            refresh_token_ttl: period("30d"),
        },
        created_at: now,
        updated_at: now,
    }
}

/// The claims of a Keyward access token (see `token::claims::access_token`), one hour left.
fn claims(tenant: &Tenant, now: OffsetDateTime) -> serde_json::Value {
    json!({
        "role": "editor",
        "iss": tenant.issuer,
        "sub": "user-4711",
        "aud": AUDIENCE,
        "iat": now.unix_timestamp(),
        "exp": (now + time::Duration::hours(1)).unix_timestamp(),
        "jti": "0b4c7c3e-5b0e-4a8e-9d0b-6f1d2c3a4b5c",
        "sid": new_session_id(now, *b"benchsid"),
        "client_id": "web-app",
        "scope": "openid profile read:orders write:orders",
    })
}

/// The parsed and unparsed public key of a JWK, built from its published parameters.
fn raw_public(jwk: &PublicJwk, alg: SigningAlg) -> Raw {
    let field = |f: &Option<String>| B64.decode(f.as_deref().expect("jwk field")).expect("jwk base64");
    let (algorithm, parsed): (&'static dyn VerificationAlgorithm, ParsedPublicKey) = match alg {
        SigningAlg::Es256 => {
            let mut point = vec![0x04];
            point.extend(field(&jwk.x));
            point.extend(field(&jwk.y));
            (&ECDSA_P256_SHA256_FIXED, ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).expect("P-256 key"))
        }
        SigningAlg::EdDsa => (&ED25519, ParsedPublicKey::new(&ED25519, field(&jwk.x)).expect("Ed25519 key")),
        SigningAlg::Rs256 => {
            let components = RsaPublicKeyComponents { n: field(&jwk.n), e: field(&jwk.e) };
            let parsed = components.to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256).expect("RSA key");
            (&RSA_PKCS1_2048_8192_SHA256, parsed)
        }
    };
    // The bytes the key was parsed from (for RSA, its SubjectPublicKeyInfo DER), which is
    // what `UnparsedPublicKey` parses again on every call.
    let public = parsed.as_ref().to_vec();
    Raw::Asymmetric { parsed, algorithm, public }
}

fn verifiers(registry: &Arc<Registry>, clock: &Arc<dyn Clock>) -> (Verifier, Verifier) {
    let verifier = |capacity| {
        Verifier::new(
            Arc::clone(registry),
            Arc::new(Revocations::default()),
            Arc::new(Metrics::new()),
            Arc::clone(clock),
            period("30s"),
            Arc::new(VerifiedCache::new(capacity)),
        )
    };
    (verifier(0), verifier(1024))
}

fn split(token: &str) -> (Vec<u8>, Vec<u8>) {
    let (message, signature) = token.rsplit_once('.').expect("three segments");
    (message.as_bytes().to_vec(), B64.decode(signature).expect("signature base64"))
}

/// A tenant whose only key is an active `alg` key, and a token it signed.
fn asymmetric_case(
    name: &'static str,
    alg: SigningAlg,
    master: &MasterKeys,
    registry: &Arc<Registry>,
    clock: &Arc<dyn Clock>,
) -> Case {
    let now = clock.now();
    let tenant = tenant(&format!("bench-{}", name.to_ascii_lowercase()), alg, now);
    let generated = generate(alg).expect("key generation");
    let kid = generated.public.kid.clone();
    let sealed = master.seal(generated.private.as_bytes(), key_owner(&tenant.id, &kid)).expect("seal");
    let meta = Key {
        kid,
        alg,
        state: KeyState::Active,
        created_at: now,
        activated_at: Some(now),
        retired_at: None,
        expired_at: None,
        revoked_at: None,
        last_token_exp: None,
    };
    let raw = raw_public(&generated.public, alg);
    let loaded = LoadedTenant {
        tenant: tenant.clone(),
        version: 1,
        keys: vec![StoredKey { meta, public: generated.public, sealed }],
        secrets: Vec::new(),
    };
    registry.install(TenantKeys::build(loaded, master).expect("snapshot"));
    let signer = registry.get(tenant.id.as_str()).and_then(|s| s.signer.clone()).expect("active signer");
    let token = jws::sign(&signer, "at+jwt", &claims(&tenant, now)).expect("sign");
    let (message, signature) = split(&token);
    let (miss, hit) = verifiers(registry, clock);
    Case { name, tenant: tenant.id.as_str().to_owned(), token, message, signature, raw, miss, hit }
}

/// A tenant with a current HS256 secret, and a token made the way common JWT libraries
/// make them with `JWT_SECRET`: header `{"alg":"HS256","typ":"JWT"}`, no kid.
fn hs256_case(master: &MasterKeys, registry: &Arc<Registry>, clock: &Arc<dyn Clock>) -> Case {
    let now = clock.now();
    let tenant = tenant("bench-hs256", SigningAlg::Es256, now);
    let kid = "hs256-bench".to_owned();
    let sealed = master.seal(HS256_SECRET.as_bytes(), secret_owner(&tenant.id, &kid)).expect("seal");
    let secret = StoredSecret { kid, state: SecretState::Current, sealed, created_at: now, not_after: None };
    let loaded = LoadedTenant { tenant: tenant.clone(), version: 1, keys: Vec::new(), secrets: vec![secret] };
    registry.install(TenantKeys::build(loaded, master).expect("snapshot"));

    let key = hmac::Key::new(hmac::HMAC_SHA256, HS256_SECRET.as_bytes());
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B64.encode(serde_json::to_vec(&claims(&tenant, now)).expect("claims"));
    let message = format!("{header}.{payload}");
    let token = format!("{message}.{}", B64.encode(hmac::sign(&key, message.as_bytes())));
    let (message, signature) = split(&token);
    let (miss, hit) = verifiers(registry, clock);
    Case {
        name: "HS256",
        tenant: tenant.id.as_str().to_owned(),
        token,
        message,
        signature,
        raw: Raw::Hmac(Box::new(key)),
        miss,
        hit,
    }
}

/// Proves that every measured call succeeds, and that the hit verifier really hits.
fn assert_measurable(case: &Case) {
    let name = case.name;
    match &case.raw {
        Raw::Asymmetric { parsed, algorithm, public } => {
            assert!(parsed.verify_sig(&case.message, &case.signature).is_ok(), "{name}: raw parsed check");
            let unparsed = UnparsedPublicKey::new(*algorithm, public);
            assert!(unparsed.verify(&case.message, &case.signature).is_ok(), "{name}: raw unparsed check");
        }
        Raw::Hmac(key) => assert!(hmac::verify(key, &case.message, &case.signature).is_ok(), "{name}: raw HMAC"),
    }
    assert!(jws::parse(&case.token).is_ok(), "{name}: parse");
    let checked = case.miss.verify(&case.tenant, &case.token, None);
    assert!(checked.is_ok(), "{name}: miss verifier answered {:?}", checked.err());
    assert!(case.miss.cache().is_empty(), "{name}: the miss verifier must not cache");
    let first = case.hit.verify(&case.tenant, &case.token, None).expect("hit verifier, first call");
    let again = case.hit.verify(&case.tenant, &case.token, None).expect("hit verifier, second call");
    assert!(Arc::ptr_eq(&first, &again), "{name}: the second call must come from the cache");
    assert_eq!(case.hit.cache().len(), 1, "{name}: one cached token");
}

fn bench_case(c: &mut Criterion, case: &Case) {
    assert_measurable(case);
    let mut group = c.benchmark_group(format!("verify/{}", case.name));
    group.throughput(Throughput::Elements(1));
    let (message, signature) = (case.message.as_slice(), case.signature.as_slice());
    match &case.raw {
        Raw::Asymmetric { parsed, algorithm, public } => {
            group.bench_function("raw_parsed_key", |b| {
                b.iter(|| black_box(parsed).verify_sig(black_box(message), black_box(signature)))
            });
            let unparsed = UnparsedPublicKey::new(*algorithm, public.as_slice());
            group.bench_function("raw_unparsed_key", |b| {
                b.iter(|| black_box(&unparsed).verify(black_box(message), black_box(signature)))
            });
        }
        Raw::Hmac(key) => {
            group.bench_function("raw_hmac", |b| {
                b.iter(|| hmac::verify(black_box(key), black_box(message), black_box(signature)))
            });
        }
    }
    let token = case.token.as_str();
    group.bench_function("jws_parse", |b| b.iter(|| jws::parse(black_box(token)).is_ok()));
    group.bench_function("verifier_miss", |b| b.iter(|| case.miss.verify(&case.tenant, black_box(token), None)));
    group.bench_function("verifier_hit", |b| b.iter(|| case.hit.verify(&case.tenant, black_box(token), None)));
    group.finish();
}

fn verify(c: &mut Criterion) {
    let master = MasterKeys::parse(&MasterKeys::generate_spec("bench").expect("master key")).expect("master key");
    let registry = Arc::new(Registry::default());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let cases = [
        asymmetric_case("ES256", SigningAlg::Es256, &master, &registry, &clock),
        asymmetric_case("EdDSA", SigningAlg::EdDsa, &master, &registry, &clock),
        asymmetric_case("RS256", SigningAlg::Rs256, &master, &registry, &clock),
        hs256_case(&master, &registry, &clock),
    ];
    for case in &cases {
        bench_case(c, case);
    }
}

criterion_group! {
    name = benches;
    // Shorter than the defaults (3 s + 5 s) so the whole run stays near three minutes on
    // a 2-core machine; the intervals criterion reports show whether that was enough.
    config = Criterion::default().warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(4));
    targets = verify
}
criterion_main!(benches);
