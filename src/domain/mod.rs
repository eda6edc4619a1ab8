//! The domain: tenants, policies, keys and their lifecycle, audit events. Pure: no I/O, no
//! clock reads (`now` is always an argument), no key material.

mod audit;
mod key;
mod period;
mod tenant;

pub use audit::{Actor, AuditEvent, EventKind};
pub use key::{
    Key, KeyRef, KeyState, KeyUnusable, LifecycleError, Plan, SigningAlg, StalePlan, Transition, activate, revoke,
    rotate, schedule, stage,
};
pub use period::{Period, PeriodError};
pub use tenant::{InvalidTenantId, Policy, PolicyError, PolicyPatch, Tenant, TenantError, TenantId, validate_identity};
