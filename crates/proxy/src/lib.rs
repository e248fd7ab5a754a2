//! Tollgate's data plane: listeners and TLS, the compiled routing snapshot and its atomic
//! swap on reload, the request pipeline (limits → routing → policies → upstream → response
//! hooks), upstream pools and their HTTP/1.1 client, metrics and the access log, and graceful
//! shutdown.
//!
//! The request path reads one immutable [`compile::Snapshot`] per request and never takes a
//! lock that is held across an await.

pub mod access_log;
pub mod body;
pub mod compile;
pub mod forward;
mod framing;
mod gateway;
pub mod h1;
mod heads;
pub mod metrics;
mod pipeline;
pub mod router;
mod server;
pub mod tls;
pub mod upstream;
pub mod usage;

pub use gateway::{Gateway, Options, ReloadError};
pub use pipeline::X_REQUEST_ID;
pub use server::{Bound, Shutdown, ShutdownTrigger, accept, shutdown_pair};

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
