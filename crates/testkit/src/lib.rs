//! Test harness for black-box tests of the `tollgate` binary: real upstream servers on
//! loopback ([`Upstream`]), the real gateway process ([`Gateway`]), a config builder
//! ([`ConfigBuilder`]), raw HTTP for hostile requests ([`raw`]), RFC 9457 problem checks
//! ([`assert_problem`]) and Prometheus text parsing ([`metric_value`]).
//!
//! Everything binds port 0, so tests run in parallel.
//!
//! ```text
//! let up = Upstream::echo("accounts-v2").await;
//! let yaml = ConfigBuilder::new().upstream("a", &up.url()).get("r", "/v2/accounts/{id}", "a").render();
//! let gw = Gateway::start(env!("CARGO_BIN_EXE_tollgate"), &yaml).await?;
//! let resp = gw.client().get(gw.url("/v2/accounts/42")).send().await?;
//! ```

mod config;
mod gateway;
mod metrics;
pub mod postgres;
mod problem;
pub mod raw;
mod redis;
mod upstream;

pub use config::{API, ConfigBuilder, RouteSpec, TENANT, UpstreamSpec};
pub use gateway::{ADMIN_TOKEN, Gateway, GatewayBuilder, Signal, TempDir, client_builder, rss_of};
pub use metrics::metric_value;
pub use problem::{assert_problem, expect_problem, schema_path};
pub use redis::RedisServer;
pub use upstream::{Behaviour, Blackhole, Seen, Upstream, UpstreamBuilder, dead_addr};

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The workspace root (the folder holding `examples/` and `crates/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `examples/bank/certs`: `ca.pem`, `server.pem` (api.bank.test, localhost, 127.0.0.1), ...
pub fn bank_certs_dir() -> PathBuf {
    workspace_root().join("examples/bank/certs")
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
