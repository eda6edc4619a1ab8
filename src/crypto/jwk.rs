//! Public JWKs (RFC 7517/7518/8037) and their RFC 7638 thumbprints, which are our kids.
//!
//! Only public parameters exist in this type: there is no field a private parameter could
//! be put in, so no code path can publish one.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::SigningAlg;

/// The public half of a signing key, as published in the JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kty: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub kid: String,
    pub alg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("stored public key is inconsistent: {0}")]
pub struct JwkError(pub &'static str);

impl PublicJwk {
    /// EC P-256 from an uncompressed SEC1 point (`0x04 || x || y`).
    pub(crate) fn ec_p256(point: &[u8]) -> Result<PublicJwk, JwkError> {
        if point.len() != 65 || point[0] != 0x04 {
            return Err(JwkError("not an uncompressed P-256 point"));
        }
        Ok(PublicJwk::new("EC", SigningAlg::Es256)
            .with(|j| {
                j.crv = Some("P-256".into());
                j.x = Some(B64.encode(&point[1..33]));
                j.y = Some(B64.encode(&point[33..]));
            })
            .with_thumbprint())
    }

    pub(crate) fn ed25519(public: &[u8]) -> Result<PublicJwk, JwkError> {
        if public.len() != 32 {
            return Err(JwkError("not a 32-byte Ed25519 public key"));
        }
        Ok(PublicJwk::new("OKP", SigningAlg::EdDsa)
            .with(|j| {
                j.crv = Some("Ed25519".into());
                j.x = Some(B64.encode(public));
            })
            .with_thumbprint())
    }

    /// RSA from big-endian modulus and exponent without leading zeros.
    pub(crate) fn rsa(n: &[u8], e: &[u8]) -> PublicJwk {
        PublicJwk::new("RSA", SigningAlg::Rs256)
            .with(|j| {
                j.n = Some(B64.encode(n));
                j.e = Some(B64.encode(e));
            })
            .with_thumbprint()
    }

    fn new(kty: &str, alg: SigningAlg) -> PublicJwk {
        PublicJwk {
            kty: kty.into(),
            use_: "sig".into(),
            kid: String::new(),
            alg: alg.as_str().into(),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
        }
    }

    fn with(mut self, f: impl FnOnce(&mut PublicJwk)) -> PublicJwk {
        f(&mut self);
        self
    }

    fn with_thumbprint(mut self) -> PublicJwk {
        self.kid = self.thumbprint();
        self
    }

    /// RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order,
    /// base64url without padding.
    pub fn thumbprint(&self) -> String {
        let s = |v: &Option<String>| serde_json::to_string(v.as_deref().unwrap_or_default()).unwrap_or_default();
        let kty = serde_json::to_string(&self.kty).unwrap_or_default();
        let canonical = match self.kty.as_str() {
            "EC" => format!(r#"{{"crv":{},"kty":{kty},"x":{},"y":{}}}"#, s(&self.crv), s(&self.x), s(&self.y)),
            "OKP" => format!(r#"{{"crv":{},"kty":{kty},"x":{}}}"#, s(&self.crv), s(&self.x)),
            _ => format!(r#"{{"e":{},"kty":{kty},"n":{}}}"#, s(&self.e), s(&self.n)),
        };
        B64.encode(Sha256::digest(canonical.as_bytes()))
    }

    pub fn signing_alg(&self) -> Option<SigningAlg> {
        SigningAlg::parse(&self.alg)
    }

    pub(crate) fn decode(field: &Option<String>) -> Result<Vec<u8>, JwkError> {
        let text = field.as_deref().ok_or(JwkError("missing public parameter"))?;
        B64.decode(text).map_err(|_| JwkError("public parameter is not base64url"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 section 3.1's example key and thumbprint.
    #[test]
    fn thumbprint_matches_rfc7638_example() {
        let jwk = PublicJwk {
            kty: "RSA".into(),
            use_: "sig".into(),
            kid: String::new(),
            alg: "RS256".into(),
            crv: None,
            x: None,
            y: None,
            n: Some("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into()),
            e: Some("AQAB".into()),
        };
        assert_eq!(jwk.thumbprint(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }
}
