//! `tollgate demo`, the README's first command: the bank example on its fixed ports with the
//! sample backends, the identity provider and the authorizer, answering the lines it prints.
//! The only test on the scenario's fixed ports (every other one uses port 0).

use crate::common::*;
use anyhow::{Context, Result, bail};
use std::time::Duration;
use tollgate_testkit::{TempDir, eventually};

const GOLD_KEY: &str = "tg_gold_0123456789abcdef";
const GOLD_SECRET: &str = "cs_gold_0123456789abcdef";
const ADMIN_TOKEN: &str = "demo-test-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_the_bank_example_and_stops_cleanly() -> Result<()> {
    for port in [8080, 8443, 9901, 9101, 9102, 9103, 9104, 9105, 9190, 9191] {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("port {port} is taken: stop whatever runs the demo and run this test again");
        }
    }
    let dir = TempDir::new("demo")?;
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = std::process::Command::new(BIN)
        .arg("demo")
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        // The example's default store sits beside it in the repository; keep tests out of it.
        .env(
            "TOLLGATE_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("demo.db").display()),
        )
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .context("start the demo")?;
    // Stopped however the test ends.
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
    let _reap = Reap(child.id());
    let text = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let ready = eventually(Duration::from_secs(20), || async {
        let r = http.get("http://127.0.0.1:9901/health/ready").send().await;
        r.ok().filter(|r| r.status() == 200)
    })
    .await;
    if ready.is_none() {
        bail!("the demo never became ready: {}", text(&err_path));
    }

    // A partner key, a token from the gateway's own token endpoint, the public fx rates.
    let r = http
        .get("http://127.0.0.1:8080/v2/accounts/42")
        .header("x-api-key", GOLD_KEY)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().await?;
    assert_eq!(echo["service"], "accounts-v2", "{echo}");
    assert_eq!(
        echoed(&echo, "x-consumer-id"),
        Some("partner-gold"),
        "{echo}"
    );
    let token: serde_json::Value = http
        .post("http://127.0.0.1:8080/oauth2/token")
        .basic_auth("partner-gold", Some(GOLD_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await?
        .json()
        .await?;
    let token = token["access_token"].as_str().context("access_token")?;
    let r = http
        .get("http://127.0.0.1:8080/v2/accounts/42")
        .bearer_auth(token)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    // A token from the demo identity provider, which must be up before the gateway looks.
    let idp_token = http
        .get("http://127.0.0.1:9190/token?sub=partner-gold&scope=accounts:read")
        .send()
        .await?
        .text()
        .await?;
    let r = http
        .get("http://127.0.0.1:8080/v1/accounts/42")
        .bearer_auth(idp_token.trim())
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("deprecation"));
    let r = http.get("http://127.0.0.1:8080/v1/fx/rates").send().await?;
    assert_eq!(r.status(), 200);
    let metrics = http
        .get("http://127.0.0.1:9901/metrics")
        .send()
        .await?
        .text()
        .await?;
    assert!(metrics.contains("tollgate_requests_total"), "{metrics}");

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            bail!("the demo did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (stdout, stderr) = (text(&out_path), text(&err_path));
    assert!(exit.success(), "exit {exit:?}: {stderr}");
    assert!(stdout.contains("curl -i"), "prints what to try: {stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !stderr.contains("JWKS fetch failed"),
        "the identity provider starts before the gateway: {stderr}"
    );
    for secret in [GOLD_SECRET, token, idp_token.trim(), ADMIN_TOKEN] {
        assert!(!stderr.contains(secret), "a secret in the logs: {stderr}");
    }
    Ok(())
}
