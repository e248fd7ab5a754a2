//! Protocols: HTTP/1.1, h2c by prior knowledge, TLS with ALPN h2 and http/1.1, and SNI
//! choosing among several certificates.

use crate::common::*;
use anyhow::{Context as _, Result, ensure};
use reqwest::Version;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::process::Command;
use tollgate_testkit::{
    ConfigBuilder, RouteSpec, TempDir, Upstream, bank_certs_dir, client_builder,
};

fn bank_ca() -> PathBuf {
    bank_certs_dir().join("ca.pem")
}

fn cert_der(pem: &Path) -> Result<Vec<u8>> {
    let first = CertificateDer::pem_file_iter(pem)?
        .next()
        .context("no certificate in file")??;
    Ok(first.as_ref().to_vec())
}

fn peer_cert(r: &reqwest::Response) -> Option<Vec<u8>> {
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
}

async fn tls_gateway(
    extra: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> Result<(Upstream, tollgate_testkit::Gateway)> {
    let up = Upstream::echo("accounts-v2").await;
    let cfg = extra(
        ConfigBuilder::new()
            .bank_tls()
            .upstream("up", &up.url())
            .get("echo", "/e/{id}", "up")
            .route(RouteSpec::new("post", "/post", "up").methods(&["POST"])),
    );
    let gw = start(&cfg).await?;
    Ok((up, gw))
}

#[tokio::test]
async fn plain_http1_is_served() -> Result<()> {
    let (_up, gw) = echo_gateway("up").await?;
    let r = gw.client().get(gw.url("/e/1")).send().await?;
    assert_eq!(r.version(), Version::HTTP_11);
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().await?;
    assert_eq!(echo["path"], "/e/1");
    assert_eq!(echoed(&echo, "x-forwarded-proto"), Some("http"));
    Ok(())
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_on_the_plain_listener() -> Result<()> {
    let (up, gw) = tls_gateway(|c| c).await?;
    let c = gw.h2c_client();
    let r = c.get(gw.url("/e/h2")).send().await?;
    assert_eq!(r.version(), Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    let echo: serde_json::Value = r.json().await?;
    assert_eq!(echo["path"], "/e/h2");
    assert_eq!(echoed(&echo, "x-forwarded-proto"), Some("http"));
    assert_eq!(echoed(&echo, "x-forwarded-for"), Some("127.0.0.1"));
    let authority = gw.public_addr().to_string();
    assert_eq!(
        echoed(&echo, "x-forwarded-host"),
        Some(authority.as_str()),
        "from :authority"
    );

    let r = c
        .post(gw.url("/post"))
        .body("hello over h2c")
        .send()
        .await?;
    assert_eq!(r.version(), Version::HTTP_2);
    let echo: serde_json::Value = r.json().await?;
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], "hello over h2c");

    // Many streams on one connection.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let url = gw.url(&format!("/e/{i}"));
        tasks.push(tokio::spawn(async move {
            c.get(url).send().await.map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await??, 200);
    }
    assert_eq!(up.hits(), 22);
    Ok(())
}

#[tokio::test]
async fn head_over_h2_gets_fields_without_content_even_for_the_gateways_own_answers() -> Result<()>
{
    let (_up, gw) = tls_gateway(|c| c).await?;
    let c = gw.h2c_client();
    // The gateway's own answer (a problem document over GET) and the upstream's.
    for (path, status) in [("/nowhere", 404), ("/e/1", 200)] {
        let r = c.head(gw.url(path)).send().await?;
        assert_eq!(r.version(), Version::HTTP_2);
        assert_eq!(r.status(), status, "{path}");
        let problem = r
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/problem+json");
        assert_eq!(problem, status == 404, "{path}");
        let body = r.bytes().await?;
        assert!(body.is_empty(), "{path}: {} bytes of content", body.len());
    }
    Ok(())
}

#[tokio::test]
async fn tls_negotiates_h2_by_alpn() -> Result<()> {
    let (_up, gw) = tls_gateway(|c| c).await?;
    let c = gw.tls_client(&bank_ca())?;
    let r = c.get(gw.tls_url("api.bank.test", "/e/tls")).send().await?;
    assert_eq!(r.version(), Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().await?;
    assert_eq!(echo["path"], "/e/tls");
    assert_eq!(echoed(&echo, "x-forwarded-proto"), Some("https"));
    let port = gw.tls_addr().port();
    assert_eq!(
        echoed(&echo, "x-forwarded-host"),
        Some(format!("api.bank.test:{port}").as_str())
    );

    // The certificate also names localhost.
    let r = c.get(gw.tls_url("localhost", "/e/1")).send().await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

#[tokio::test]
async fn tls_serves_http1_when_the_client_offers_only_http1() -> Result<()> {
    let (_up, gw) = tls_gateway(|c| c).await?;
    let c = gw
        .tls_client_builder(&bank_ca(), &[])?
        .http1_only()
        .build()?;
    let r = c.get(gw.tls_url("api.bank.test", "/e/tls1")).send().await?;
    assert_eq!(r.version(), Version::HTTP_11);
    assert_eq!(r.status(), 200);
    let r = c
        .post(gw.tls_url("api.bank.test", "/post"))
        .body("b")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().await?;
    assert_eq!(echo["body"], "b");
    Ok(())
}

/// A CA of our own and a leaf for `other.test` signed by it, made with the openssl CLI.
fn make_other_cert(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("run openssl")?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Tollgate Test CA",
    ]);
    run(&a)?;
    let mut a = vec!["req", "-new"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=other.test",
    ]);
    run(&a)?;
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:other.test\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ])?;
    Ok((
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    ))
}

#[tokio::test]
async fn sni_chooses_the_certificate() -> Result<()> {
    let tmp = TempDir::new("tollgate-sni")?;
    let (other_ca, other_cert, other_key) = make_other_cert(tmp.path())?;
    let (_up, gw) = tls_gateway(|c| c.tls_certificate(&other_cert, &other_key)).await?;
    let bank_der = cert_der(&bank_certs_dir().join("server.pem"))?;
    let other_der = cert_der(&other_cert)?;
    assert_ne!(bank_der, other_der);

    let bank_client = gw
        .tls_client_builder(&bank_ca(), &["other.test"])?
        .build()?;
    let other_client = gw.tls_client_builder(&other_ca, &["other.test"])?.build()?;

    let r = bank_client
        .get(gw.tls_url("api.bank.test", "/e/1"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(
        peer_cert(&r),
        Some(bank_der.clone()),
        "api.bank.test gets the bank certificate"
    );

    let r = other_client
        .get(gw.tls_url("other.test", "/e/1"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(
        peer_cert(&r),
        Some(other_der.clone()),
        "other.test gets its own certificate"
    );

    // Each name is served only its own certificate: trusting the other CA fails.
    assert!(
        other_client
            .get(gw.tls_url("api.bank.test", "/e/1"))
            .send()
            .await
            .is_err()
    );
    assert!(
        bank_client
            .get(gw.tls_url("other.test", "/e/1"))
            .send()
            .await
            .is_err()
    );

    // An unknown name gets the first (default) certificate.
    let any = client_builder()
        .tls_danger_accept_invalid_certs(true)
        .tls_info(true)
        .resolve("unknown.test", gw.tls_addr())
        .build()?;
    let r = any.get(gw.tls_url("unknown.test", "/e/1")).send().await?;
    assert_eq!(r.status(), 200);
    assert_eq!(
        peer_cert(&r),
        Some(bank_der),
        "unknown SNI gets the default certificate"
    );
    Ok(())
}
