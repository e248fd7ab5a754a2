//! Black-box integration tests: the real `tollgate` binary against real upstream servers, all
//! on loopback port 0, so every test runs in parallel with every other.

mod admin;
mod cli;
mod cli_admin;
mod common;
mod demo;
mod headers;
mod http1;
mod identity;
mod limits;
mod observability;
mod protocols;
mod redis;
mod reload;
mod routing;
mod schemathesis;
mod shutdown;
mod streaming;
mod traffic;
mod upstreams;
mod versions;
