//! Identity: who is calling. Each credential scheme is its own module; the `Auth` policy
//! (per route, `any` or `all` of the schemes, plus required scopes) ties a request to a
//! consumer or refuses it before anything else runs on it.

pub mod jwt;
pub mod sigv4;
