//! Keyward: key management and token verification.
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod fanout;
pub mod health;
pub mod http;
pub mod keyset;
pub mod metrics;
pub mod ratelimit;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod token;
