//! The pipeline trait. A route's compiled policy chain runs in [`Phase`] order before the
//! upstream is called, and in reverse on the way back, as in pingora's phase hooks.
//!
//! The request hook is synchronous and returns a [`Step`]; a policy that must wait (a JWKS fetch,
//! a Redis round trip, an external authorizer) returns [`Step::Wait`] with a boxed future. The
//! common case therefore costs no allocation, and no policy can hold a lock across an await
//! without doing so visibly inside its own future.

use crate::{GatewayError, RequestCtx};
use futures_util::future::BoxFuture;

/// Where in the pipeline a policy runs. Earlier phases run first; a policy that rejects stops
/// the chain, so cheap refusals (edge rules, authentication) go before expensive work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Before anything about the caller is known: IP rules.
    Edge,
    /// Selects what the request is addressed to: versions, sunset.
    Version,
    /// Establishes the consumer.
    Authenticate,
    /// Rate limits, quotas, concurrency.
    Limit,
    /// Payload checks: validation, idempotency, cache lookups.
    Payload,
    /// Last rewrites before the upstream sees the request.
    Transform,
}

/// What a policy's request hook decided.
pub enum Step<'a> {
    /// Go on with the next policy.
    Continue,
    /// Stop and answer with this error.
    Reject(GatewayError),
    /// Stop and answer with this response (a cache hit, an idempotent replay).
    Respond(http::Response<bytes::Bytes>),
    /// The decision needs I/O; the future resolves to one of the other outcomes.
    Wait(BoxFuture<'a, Decision>),
}

/// The outcome of an asynchronous request hook.
pub enum Decision {
    Continue,
    Reject(GatewayError),
    Respond(http::Response<bytes::Bytes>),
}

pub trait Policy: Send + Sync + 'static {
    /// Short stable name for logs.
    fn name(&self) -> &'static str;

    fn phase(&self) -> Phase;

    /// Runs before the upstream is called. May read and change the request head.
    fn on_request<'a>(
        &'a self,
        _ctx: &'a mut RequestCtx,
        _req: &'a mut http::request::Parts,
    ) -> Step<'a> {
        Step::Continue
    }

    /// Runs on every response once the route is known: upstream responses, gateway errors and
    /// policy answers alike. A policy whose hook reads or changes fields the response already
    /// has must say so in [`Policy::edits_response`]; adding fields needs nothing more.
    fn on_response(&self, _ctx: &RequestCtx, _resp: &mut http::response::Parts) {}

    /// Whether `on_response` needs the upstream's response fields in `resp.headers`. Without
    /// such a policy on the route they are passed to HTTP/1.1 clients as they arrived, never
    /// parsed into the map, and the map holds only what the gateway adds.
    fn edits_response(&self) -> bool {
        false
    }
}
