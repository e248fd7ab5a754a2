//! What every pipeline stage shares: the gateway error and its RFC 9457 problem rendering, the
//! per-request context, the [`Policy`] trait with its phases, injected clocks and id sources,
//! and request correlation (`X-Request-ID`, `traceparent`).
//!
//! This crate has no I/O and few dependencies so that every other crate can build on it.

pub mod clock;
mod context;
mod error;
mod policy;
mod redact;
pub mod trace;
pub mod usage;

pub use clock::{Clock, ManualClock, SystemClock};
pub use context::{
    ClientCert, Consumer, Listener, RequestCtx, RouteMeta, Scopes, X_CONSUMER_ID, X_CONSUMER_PLAN,
    X_CONSUMER_TENANT,
};
pub use error::{CLIENT_CLOSED_REQUEST, Fault, GatewayError, Kind, PROBLEM_BASE, PROBLEM_JSON};
pub use policy::{Decision, Phase, Policy, Step};
pub use redact::redact_url;
