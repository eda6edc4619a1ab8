//! Why a token is rejected. The codes, and the order in which they win when several apply,
//! are part of the contract (API.md "Verification").

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not a compact JWS, bad encoding, not JSON objects, no `exp`, over 8 KiB.
    Malformed,
    /// `alg` is `none`, unknown, unaccepted by the tenant, or not the named key's alg.
    UnsupportedAlg,
    UnknownKid,
    KeyRevoked,
    KeyExpired,
    /// Signed by a staged key (published, not yet allowed to sign).
    KeyNotActive,
    BadSignature,
    Expired,
    NotYetValid,
    IssuerMismatch,
    AudienceMismatch,
    SessionRevoked,
    TokenRevoked,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::Malformed,
        Reason::UnsupportedAlg,
        Reason::UnknownKid,
        Reason::KeyRevoked,
        Reason::KeyExpired,
        Reason::KeyNotActive,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuerMismatch,
        Reason::AudienceMismatch,
        Reason::SessionRevoked,
        Reason::TokenRevoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UnsupportedAlg => "unsupported_alg",
            Reason::UnknownKid => "unknown_kid",
            Reason::KeyRevoked => "key_revoked",
            Reason::KeyExpired => "key_expired",
            Reason::KeyNotActive => "key_not_active",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuerMismatch => "issuer_mismatch",
            Reason::AudienceMismatch => "audience_mismatch",
            Reason::SessionRevoked => "session_revoked",
            Reason::TokenRevoked => "token_revoked",
        }
    }
}
