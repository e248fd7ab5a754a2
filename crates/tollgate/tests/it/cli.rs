//! The command line: `validate`, `--version`, `--help`, and `serve` refusing a bad file.

use crate::common::*;
use anyhow::Result;
use std::path::Path;
use std::process::{Command, Output};
use tollgate_testkit::{ConfigBuilder, Gateway, TempDir, workspace_root};

fn tollgate(args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in [
        "TOLLGATE_PUBLIC_ADDR",
        "TOLLGATE_TLS_ADDR",
        "TOLLGATE_ADMIN_ADDR",
        "TOLLGATE_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    Ok(cmd.output()?)
}

fn validate(path: &Path) -> Result<Output> {
    tollgate(&["validate", "--config", &path.display().to_string()])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_accepts_a_good_file() -> Result<()> {
    let dir = TempDir::new("tollgate-cli")?;
    let path = dir.path().join("good.yaml");
    let cfg = ConfigBuilder::new()
        .upstream("up", "http://127.0.0.1:9")
        .get("echo", "/e/{id}", "up");
    std::fs::write(&path, cfg.render())?;
    let out = validate(&path)?;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok"), "{}", text(&out.stdout));
    Ok(())
}

#[test]
fn the_bank_example_validates() -> Result<()> {
    let out = validate(&workspace_root().join("examples/bank/gateway.yaml"))?;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    Ok(())
}

#[test]
fn validate_names_an_unknown_key_with_its_path_and_line() -> Result<()> {
    let dir = TempDir::new("tollgate-cli")?;
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listeners:\n\
         \x20 public:\n\
         \x20   addr: \"127.0.0.1:0\"\n\
         upstreams:\n\
         \x20 up:\n\
         \x20   targets:\n\
         \x20     - url: \"http://127.0.0.1:9\"\n\
         \x20   conect_timeout: 1s\n",
    )?;
    let out = validate(&path)?;
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a typo must fail validation");
    assert!(err.contains("conect_timeout"), "names the key: {err}");
    assert!(err.contains("upstreams.up"), "names the key path: {err}");
    assert!(err.contains("line 8"), "names the line: {err}");
    Ok(())
}

#[test]
fn validate_names_an_unknown_upstream_with_its_path_and_line() -> Result<()> {
    let dir = TempDir::new("tollgate-cli")?;
    let path = dir.path().join("bad.yaml");
    let yaml = ConfigBuilder::new()
        .upstream("up", "http://127.0.0.1:9")
        .get("echo", "/e/{id}", "up")
        .get("broken", "/b", "nope")
        .render();
    let line = yaml
        .lines()
        .position(|l| l.contains("upstream: nope"))
        .map(|i| i + 1)
        .expect("line");
    std::fs::write(&path, &yaml)?;
    let out = validate(&path)?;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("tenants.test.apis.main.routes[1].upstream"),
        "{err}"
    );
    assert!(err.contains(&format!("line {line}")), "line {line}: {err}");
    assert!(err.contains("nope"), "{err}");
    Ok(())
}

#[test]
fn validate_names_a_wrong_type_once_and_a_route_conflict_once() -> Result<()> {
    let dir = TempDir::new("tollgate-cli")?;
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listeners:\n  public:\n    addr: \"127.0.0.1:0\"\nserver:\n  max_headers: lots\n",
    )?;
    let err = text(&validate(&path)?.stderr);
    assert_eq!(err.matches("server.max_headers").count(), 1, "{err}");
    assert!(err.contains("line 5") && err.contains("lots"), "{err}");
    // Also when the parser's message names only the part of the path it had reached.
    std::fs::write(
        &path,
        "listeners:
  public:
    addr: localhost
",
    )?;
    let err = text(&validate(&path)?.stderr);
    assert!(err.contains("listeners.public.addr: `localhost`"), "{err}");
    assert_eq!(err.matches("listeners.public").count(), 1, "{err}");

    // One route on both listeners conflicts on each: one problem, not two.
    let yaml = ConfigBuilder::new()
        .upstream("up", "http://127.0.0.1:9")
        .get("a", "/x/{id}", "up")
        .get("b", "/x/{name}", "up")
        .render();
    std::fs::write(&path, &yaml)?;
    let out = validate(&path)?;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("overlaps").count(), 1, "{err}");
    assert!(!err.contains("Insertion failed"), "router internals: {err}");
    Ok(())
}

#[test]
fn validate_fails_for_a_missing_file() -> Result<()> {
    let out = validate(Path::new("/nonexistent/tollgate.yaml"))?;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/tollgate.yaml"));
    Ok(())
}

#[test]
fn version_and_help_work() -> Result<()> {
    let out = tollgate(&["--version"])?;
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        text(&out.stdout)
    );
    let out = tollgate(&["--help"])?;
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in ["serve", "validate", "demo"] {
        assert!(help.contains(word), "--help mentions {word}: {help}");
    }
    let out = tollgate(&["validate", "--help"])?;
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("--config"));
    Ok(())
}

#[tokio::test]
async fn serve_refuses_a_bad_file_and_exits_non_zero() -> Result<()> {
    let yaml = ConfigBuilder::new().get("broken", "/b", "nope").render();
    let err = Gateway::start(BIN, &yaml)
        .await
        .expect_err("a bad config must not start");
    let msg = format!("{err:#}");
    assert!(msg.contains("exited with"), "{msg}");
    assert!(msg.contains("unknown upstream `nope`"), "{msg}");
    Ok(())
}

#[tokio::test]
async fn environment_overrides_replace_listener_addresses() -> Result<()> {
    // The file names fixed ports; the environment moves both listeners to port 0.
    let (public, admin) = (tollgate_testkit::dead_addr(), tollgate_testkit::dead_addr());
    let yaml = ConfigBuilder::new()
        .upstream("up", "http://127.0.0.1:9")
        .get("echo", "/e/{id}", "up")
        .render()
        .replacen("127.0.0.1:0", &public.to_string(), 1)
        .replacen("127.0.0.1:0", &admin.to_string(), 1);
    assert!(
        yaml.contains(&public.to_string()) && yaml.contains(&admin.to_string()),
        "{yaml}"
    );
    let gw = Gateway::builder(BIN, &yaml)
        .env("TOLLGATE_PUBLIC_ADDR", "127.0.0.1:0")
        .env("TOLLGATE_ADMIN_ADDR", "127.0.0.1:0")
        .start()
        .await?;
    assert_ne!(gw.public_addr(), public);
    assert_ne!(gw.admin_addr(), admin);
    let r = gw.client().get(gw.url("/nowhere")).send().await?;
    assert_eq!(r.status(), 404);
    let r = gw
        .client()
        .get(format!("{}/health/live", gw.admin_url()))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

/// The soft limit in `/proc/PID/limits`, or `None` when unlimited.
fn open_file_limits(pid: u32) -> Result<(Option<u64>, Option<u64>)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or_else(|| anyhow::anyhow!("no open-file line in {limits}"))?;
    let mut f = line["Max open files".len()..].split_whitespace();
    let mut next = || f.next().and_then(|v| v.parse().ok());
    Ok((next(), next()))
}

#[tokio::test]
async fn serve_raises_a_low_open_file_limit_for_its_connections() -> Result<()> {
    // Started the way many service managers start it: soft limit far below what 1,000
    // connections need. The wrapper execs, so the gateway keeps its pid.
    let dir = TempDir::new("tollgate-nofile")?;
    let wrapper = dir.path().join("tollgate-low-nofile");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nulimit -Sn 256\nexec {BIN} \"$@\"\n"),
    )?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    }
    let yaml = ConfigBuilder::new()
        .upstream("up", "http://127.0.0.1:9")
        .get("echo", "/e/{id}", "up")
        .server("max_connections", "1000")
        .render();
    let gw = Gateway::start(&wrapper, &yaml).await?;
    let (soft, hard) = open_file_limits(gw.pid())?;
    let wanted = 2 * 1000 + 1024;
    match hard {
        Some(h) if h < wanted => {
            assert_eq!(soft, Some(h), "raised as far as the hard limit allows");
            assert!(
                gw.stderr_text().contains("open-file limit is below"),
                "{}",
                gw.stderr_text()
            );
        }
        // Upstreams registered later need descriptors too, so the limit goes as high as
        // the system lets it.
        _ => {
            let most = hard.unwrap_or(u64::MAX).min(1 << 20).max(wanted);
            assert_eq!(soft, Some(most), "raised for 1,000 connections and more");
            assert!(!gw.stderr_text().contains("open-file limit is below"));
        }
    }
    let r = gw.client().get(gw.url("/nowhere")).send().await?;
    assert_eq!(r.status(), 404);
    Ok(())
}

/// `hash` makes the values a config is still missing: it reads only the secret's path, so a
/// config with a placeholder where the hash goes is no obstacle.
#[test]
fn hash_prints_the_stored_form_for_a_config_still_waiting_for_it() -> Result<()> {
    let dir = TempDir::new("tollgate-hash")?;
    std::fs::write(dir.path().join("secret"), "cli-hash-secret-0123456789")?;
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        "identity:\n  hash_secret_file: secret\nconsumers:\n  c1: { api_keys: [{ id: k1, hash: \"TODO\" }] }\n",
    )?;
    let out = tollgate(&[
        "hash",
        "--config",
        &path.display().to_string(),
        "tg_c1_key",
        "cs_c1_secret",
    ])?;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            keyed_hash("cli-hash-secret-0123456789", "tg_c1_key"),
            keyed_hash("cli-hash-secret-0123456789", "cs_c1_secret")
        ]
    );
    // Without the setting it says what is missing.
    std::fs::write(&path, "consumers: {}\n")?;
    let out = tollgate(&["hash", "--config", &path.display().to_string(), "x"])?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("identity.hash_secret_file"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn a_missing_config_is_named_once() -> Result<()> {
    for cmd in ["validate", "serve"] {
        let out = tollgate(&[cmd, "--config", "/nonexistent/gateway.yaml"])?;
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert_eq!(err.matches("does not exist").count(), 1, "{cmd}: {err}");
    }
    Ok(())
}

/// A TLS certificate that cannot serve: the problem names the certificate file, and a CA's
/// own certificate is refused (no client would accept it for a server).
#[test]
fn validate_names_a_broken_or_ca_certificate_by_its_file() -> Result<()> {
    let dir = TempDir::new("tollgate-cli-tls")?;
    let certs = workspace_root().join("examples/bank/certs");
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )?;
    for (cert, key, says) in [
        (
            broken.clone(),
            certs.join("server-key.pem"),
            "not a valid certificate",
        ),
        (
            certs.join("ca.pem"),
            certs.join("ca-key.pem"),
            "certificate authority",
        ),
    ] {
        let yaml = ConfigBuilder::new()
            .upstream("up", "http://127.0.0.1:9")
            .get("echo", "/e/{id}", "up")
            .tls_certificate(&cert, &key)
            .render();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, yaml)?;
        let out = validate(&path)?;
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(says), "{says}: {err}");
        assert!(
            err.contains(&cert.display().to_string()),
            "names the certificate file: {err}"
        );
    }
    Ok(())
}
