//! Identity: who is calling. Each credential scheme is its own module; the `Auth` policy
//! (per route, `any` or `all` of the schemes, plus required scopes) ties a request to a
//! consumer or refuses it before anything else runs on it.

pub mod authorizer;
pub mod identity;
pub mod jwt;
mod route;
pub mod sigv4;
pub mod token_endpoint;

pub use identity::{Identity, KeyHasher};
pub use route::{Auth, X_CONSUMER_ID, X_CONSUMER_PLAN, X_CONSUMER_TENANT};
