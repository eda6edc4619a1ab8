//! Keyward: key management and token verification.
#![forbid(unsafe_code)]

pub mod clock;
pub mod crypto;
pub mod domain;
