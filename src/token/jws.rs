//! Compact JWS: parsing untrusted tokens into typed parts, and signing.
//!
//! Parsing never trusts anything: the header and payload are decoded and typed here, but
//! the payload is only `unverified` until [`crate::token::verify`] has checked the
//! signature. Only the registered claims the verifier needs are typed; the payload bytes are
//! kept as they came (valid JSON by then) so responses can embed them without re-encoding.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Deserialize;

use crate::crypto::{KeyError, SigningKey};

/// Tokens longer than this are `malformed` before any decoding (API.md).
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Why a token could not even be parsed. All of these are `malformed` to clients; the
/// variants exist for tests and debug logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("token too long")]
    TooLong,
    #[error("not three dot-separated segments")]
    Segments,
    #[error("segment is not base64url")]
    Base64,
    #[error("header is not a JSON object with a string alg")]
    Header,
    #[error("payload is not a JSON object with valid registered claims")]
    Payload,
    #[error("exp is missing")]
    MissingExp,
    #[error("header has crit parameters")]
    Crit,
}

#[derive(Debug, Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    /// Any `crit` makes the token unacceptable: we understand no extensions (RFC 7515 4.1.11).
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
    // `jku`, `x5u`, `jwk`, `x5c` are deliberately not fields: they are never looked at.
}

/// `aud`: one string or an array of strings (RFC 7519 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// A direct visitor: `#[serde(untagged)]` would buffer the value and try each variant,
/// which costs noticeably on the verification hot path.
impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Audience;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Audience, E> {
                Ok(Audience::One(v.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Audience, E> {
                Ok(Audience::One(v))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Audience, A::Error> {
                let mut all = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(16));
                while let Some(a) = seq.next_element::<String>()? {
                    all.push(a);
                }
                Ok(Audience::Many(all))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Audience {
    pub fn contains(&self, value: &str) -> bool {
        match self {
            Audience::One(a) => a == value,
            Audience::Many(all) => all.iter().any(|a| a == value),
        }
    }
}

/// The registered claims the verifier checks, typed but not yet trusted.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct UnverifiedClaims {
    #[serde(default)]
    pub exp: Option<f64>,
    #[serde(default)]
    pub nbf: Option<f64>,
    #[serde(default)]
    pub iat: Option<f64>,
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub aud: Option<Audience>,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub sid: Option<String>,
    #[serde(default)]
    pub jti: Option<String>,
}

/// A structurally valid token whose signature has not been checked.
#[derive(Debug)]
pub struct Unverified<'t> {
    pub alg: String,
    pub kid: Option<String>,
    pub claims: UnverifiedClaims,
    /// The decoded payload: a JSON object, byte for byte as signed.
    pub payload: Vec<u8>,
    /// `base64url(header) "." base64url(payload)`: what the signature covers.
    pub signing_input: &'t [u8],
    pub signature: Vec<u8>,
}

/// Splits and decodes a compact JWS. `exp` must be present (a token without expiry is
/// `malformed`, API.md).
pub fn parse(token: &str) -> Result<Unverified<'_>, ParseError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(ParseError::TooLong);
    }
    let mut parts = token.splitn(4, '.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(ParseError::Segments);
    };
    if h.is_empty() || p.is_empty() {
        return Err(ParseError::Segments);
    }
    let header_bytes = B64.decode(h).map_err(|_| ParseError::Base64)?;
    let payload = B64.decode(p).map_err(|_| ParseError::Base64)?;
    let signature = B64.decode(s).map_err(|_| ParseError::Base64)?;
    // serde would also read a struct from a JSON array; JOSE requires objects.
    if !is_object(&header_bytes) {
        return Err(ParseError::Header);
    }
    if !is_object(&payload) {
        return Err(ParseError::Payload);
    }
    let header: RawHeader<'_> = serde_json::from_slice(&header_bytes).map_err(|_| ParseError::Header)?;
    if header.crit.is_some() {
        return Err(ParseError::Crit);
    }
    let claims: UnverifiedClaims = serde_json::from_slice(&payload).map_err(|_| ParseError::Payload)?;
    // Unknown members are skipped by the typed parse above, unchecked. A lone surrogate
    // escape in one would be valid to some parsers and not to others; the payload is
    // returned to callers as is, so it must be valid JSON text for every reader.
    if has_lone_surrogate(&payload) {
        return Err(ParseError::Payload);
    }
    match claims.exp {
        None => return Err(ParseError::MissingExp),
        Some(exp) if !exp.is_finite() => return Err(ParseError::Payload),
        Some(_) => {}
    }
    Ok(Unverified {
        alg: header.alg.into_owned(),
        kid: header.kid.map(Cow::into_owned),
        claims,
        payload,
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature,
    })
}

/// Whether JSON text contains a `\uD800`–`\uDFFF` escape that is not part of a
/// high-low surrogate pair. One pass; backslashes only occur inside strings.
fn has_lone_surrogate(json: &[u8]) -> bool {
    // Almost every payload has no escape at all.
    if !json.contains(&b'\\') {
        return false;
    }
    let hex4 = |at: usize| -> Option<u16> {
        let digits = json.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let mut i = 0;
    while i < json.len() {
        if json[i] != b'\\' {
            i += 1;
            continue;
        }
        if json.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        let Some(unit) = hex4(i + 2) else { return true };
        i += 6;
        match unit {
            0xD800..=0xDBFF => {
                let low =
                    (json.get(i) == Some(&b'\\') && json.get(i + 1) == Some(&b'u')).then(|| hex4(i + 2)).flatten();
                if !low.is_some_and(|l| (0xDC00..=0xDFFF).contains(&l)) {
                    return true;
                }
                i += 6;
            }
            0xDC00..=0xDFFF => return true,
            _ => {}
        }
    }
    false
}

fn is_object(json: &[u8]) -> bool {
    json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Signs `claims` (a JSON object) with `key`: header `alg`, `kid`, `typ`.
pub fn sign(key: &SigningKey, typ: &str, claims: &serde_json::Value) -> Result<String, KeyError> {
    let header = serde_json::json!({ "alg": key.alg().as_str(), "kid": key.kid(), "typ": typ });
    let mut token = B64.encode(serde_json::to_vec(&header).map_err(|_| KeyError::Sign)?);
    token.push('.');
    token.push_str(&B64.encode(serde_json::to_vec(claims).map_err(|_| KeyError::Sign)?));
    let signature = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&B64.encode(signature));
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        B64.encode(s)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), b64("sig"))
    }

    #[test]
    fn parses_a_well_formed_token() {
        let t = token(r#"{"alg":"ES256","kid":"k1","typ":"at+jwt"}"#, r#"{"exp":10,"aud":["a","b"],"sub":"u"}"#);
        let parsed = parse(&t).unwrap();
        assert_eq!(parsed.alg, "ES256");
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.claims.exp, Some(10.0));
        assert!(parsed.claims.aud.as_ref().unwrap().contains("b"));
        let single = token(r#"{"alg":"ES256"}"#, r#"{"exp":1,"aud":"api"}"#);
        assert_eq!(parse(&single).unwrap().claims.aud, Some(Audience::One("api".into())));
        assert_eq!(parsed.signature, b"sig");
        assert_eq!(parsed.signing_input, t.rsplit_once('.').unwrap().0.as_bytes());
    }

    #[test]
    fn structural_defects_are_parse_errors() {
        let ok_header = r#"{"alg":"ES256","kid":"k"}"#;
        let cases: Vec<(String, ParseError)> = vec![
            ("a".repeat(MAX_TOKEN_BYTES + 1), ParseError::TooLong),
            ("abc".into(), ParseError::Segments),
            ("a.b".into(), ParseError::Segments),
            ("a.b.c.d".into(), ParseError::Segments),
            (".b.c".into(), ParseError::Segments),
            (format!("{}.!!!.c", b64(ok_header)), ParseError::Base64),
            (token("[1]", r#"{"exp":1}"#), ParseError::Header),
            (token(r#"{"kid":"k"}"#, r#"{"exp":1}"#), ParseError::Header),
            (token(r#"{"alg":5}"#, r#"{"exp":1}"#), ParseError::Header),
            (token(ok_header, "[]"), ParseError::Payload),
            (token(ok_header, "[1, 2, 3, 4, 5, 6, 7, 8]"), ParseError::Payload),
            (token(ok_header, r#"{"exp":1,"x":"\ud800"}"#), ParseError::Payload),
            (token(ok_header, r#"{"exp":1,"x":"\udc00\ud800"}"#), ParseError::Payload),
            (token(ok_header, r#"{"exp":1,"x":"\ud800\u0041"}"#), ParseError::Payload),
            (token(r#"["ES256"]"#, r#"{"exp":1}"#), ParseError::Header),
            (token(ok_header, r#"{"exp":"tomorrow"}"#), ParseError::Payload),
            (token(ok_header, r#"{"exp":1,"aud":5}"#), ParseError::Payload),
            (token(ok_header, r#"{"exp":1,"aud":["a",5]}"#), ParseError::Payload),
            (token(ok_header, r#"{"exp":1,"exp":2}"#), ParseError::Payload),
            (token(ok_header, r#"{"exp":1} trailing"#), ParseError::Payload),
            (token(ok_header, r#"{"sub":"u"}"#), ParseError::MissingExp),
            (token(r#"{"alg":"ES256","crit":["x"]}"#, r#"{"exp":1}"#), ParseError::Crit),
        ];
        for (t, expected) in cases {
            assert_eq!(parse(&t).unwrap_err(), expected, "token {t}");
        }
    }

    #[test]
    fn paired_surrogates_and_escaped_backslashes_are_fine() {
        assert!(!has_lone_surrogate(br#"{"x":"\ud83d\ude00"}"#));
        assert!(!has_lone_surrogate(br#"{"x":"\\ud800"}"#), "an escaped backslash, then text");
        assert!(!has_lone_surrogate(br#"{"x":"\u00e9\n"}"#));
        assert!(has_lone_surrogate(br#"{"x":"\ud83d"}"#));
    }

    #[test]
    fn remote_key_headers_are_ignored_not_followed() {
        let t = token(
            r#"{"alg":"ES256","kid":"k","jku":"http://evil","x5u":"http://evil","jwk":{"kty":"oct"}}"#,
            r#"{"exp":1}"#,
        );
        let parsed = parse(&t).unwrap();
        assert_eq!(parsed.kid.as_deref(), Some("k"));
    }
}
