//! Key material: generation, JWKs and thumbprints, signing and verification with aws-lc-rs,
//! and envelope encryption of private halves at rest. Nothing here does I/O.

pub mod envelope;
pub mod jwk;
pub mod keys;
pub mod random;

pub use envelope::{EnvelopeError, MasterKeyError, MasterKeys, Owner, Sealed};
pub use jwk::PublicJwk;
pub use keys::{GeneratedKey, KeyError, PrivatePkcs8, SigningKey, VerifyingKey, generate};
pub use random::{RandomError, hex, random_bytes};
