//! Shared helpers for the integration tests.

use anyhow::Result;
use std::time::Duration;
use tollgate_testkit::{ConfigBuilder, Gateway, Upstream};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// Starts the gateway for `cfg` (no file watching).
pub async fn start(cfg: &ConfigBuilder) -> Result<Gateway> {
    Gateway::start(BIN, &cfg.render()).await
}

/// One echo upstream `up` and route `echo`: `GET /e/{id}`.
pub fn echo_config(up: &Upstream) -> ConfigBuilder {
    ConfigBuilder::new()
        .upstream("up", &up.url())
        .get("echo", "/e/{id}", "up")
}

/// An echo upstream named `name` and a gateway routing `GET /e/{id}` to it.
pub async fn echo_gateway(name: &str) -> Result<(Upstream, Gateway)> {
    let up = Upstream::echo(name).await;
    let gw = start(&echo_config(&up)).await?;
    Ok((up, gw))
}

/// GET `url` and parse the JSON body, asserting 200.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Result<serde_json::Value> {
    let r = client.get(url).send().await?;
    let status = r.status();
    let text = r.text().await?;
    anyhow::ensure!(status == 200, "GET {url} answered {status}: {text}");
    Ok(serde_json::from_str(&text)?)
}

/// The header value the upstream echoed for `name`, if any.
pub fn echoed<'a>(echo: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    echo["headers"][name].as_str()
}

pub const SHORT: Duration = Duration::from_secs(5);

/// The requests of a `/admin/usage` answer, summed over its items.
pub fn usage_requests(usage: &serde_json::Value) -> Result<u64> {
    let items = usage["items"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no items in {usage}"))?;
    Ok(items
        .iter()
        .map(|i| i["requests"].as_u64().unwrap_or(0))
        .sum())
}

/// `hmac-sha256:` + hex of HMAC-SHA256(secret, value): the config's form of a key or secret
/// under `identity.hash_secret_file`.
pub fn keyed_hash(secret: &str, value: &str) -> String {
    use hmac::{Hmac, KeyInit as _, Mac as _};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(value.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("hmac-sha256:{hex}")
}
