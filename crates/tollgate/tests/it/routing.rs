//! Routing: one-segment path parameters, 404 / 405 problems, HEAD, per-listener routes and
//! dot-segment refusal.

use crate::common::*;
use anyhow::Result;
use tollgate_testkit::raw::raw_get;
use tollgate_testkit::{
    ConfigBuilder, RouteSpec, Upstream, assert_problem, bank_certs_dir, expect_problem,
};

#[tokio::test]
async fn path_parameters_match_exactly_one_segment() -> Result<()> {
    let up = Upstream::echo("accounts-v2").await;
    let gw = start(
        &ConfigBuilder::new()
            .upstream("accounts", &up.url())
            .get("get-account", "/v2/accounts/{id}", "accounts")
            .get(
                "list-transactions",
                "/v2/accounts/{id}/transactions",
                "accounts",
            ),
    )
    .await?;
    let c = gw.client();

    let echo = get_json(&c, &gw.url("/v2/accounts/42?limit=5")).await?;
    assert_eq!(echo["service"], "accounts-v2");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/v2/accounts/42");
    assert_eq!(echo["query"], "limit=5");

    let echo = get_json(&c, &gw.url("/v2/accounts/acc-7/transactions")).await?;
    assert_eq!(echo["path"], "/v2/accounts/acc-7/transactions");

    for path in [
        "/v2/accounts/42/extra",
        "/v2/accounts/42/transactions/9",
        "/v2/accounts",
        "/v2/accounts/",
        "/v2/accounts//transactions",
    ] {
        let r = c.get(gw.url(path)).send().await?;
        let doc = expect_problem(r, 404).await;
        assert!(
            doc["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{path}: {doc}"
        );
    }
    assert_eq!(
        up.hits(),
        2,
        "only the two matching requests reach the upstream"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_path_is_a_404_problem_with_the_request_id() -> Result<()> {
    let (up, gw) = echo_gateway("up").await?;
    let r = gw
        .client()
        .get(gw.url("/no/such/api"))
        .header("x-request-id", "route-404-check")
        .send()
        .await?;
    assert_eq!(r.headers()["x-request-id"], "route-404-check");
    let doc = expect_problem(r, 404).await;
    assert_eq!(doc["request_id"], "route-404-check");
    assert_eq!(up.hits(), 0);
    Ok(())
}

#[tokio::test]
async fn wrong_method_is_a_405_problem_with_allow() -> Result<()> {
    let up = Upstream::echo("payments").await;
    let gw = start(
        &ConfigBuilder::new()
            .upstream("payments", &up.url())
            .route(
                RouteSpec::new("payment", "/v1/payments/{id}", "payments").methods(&["GET", "PUT"]),
            )
            .route(RouteSpec::new("initiate", "/v1/payments", "payments").methods(&["POST"])),
    )
    .await?;
    let c = gw.client();

    let r = c.delete(gw.url("/v1/payments/p1")).send().await?;
    let allow = r
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut methods: Vec<&str> = allow.split(',').map(str::trim).collect();
    methods.sort_unstable();
    assert_eq!(methods, ["GET", "HEAD", "PUT"], "Allow: {allow}");
    expect_problem(r, 405).await;

    let r = c.get(gw.url("/v1/payments")).send().await?;
    assert_eq!(
        r.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    expect_problem(r, 405).await;

    // The right method on the same path works.
    let r = c.put(gw.url("/v1/payments/p1")).body("x").send().await?;
    assert_eq!(r.status(), 200);
    assert_eq!(up.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn head_is_served_wherever_get_is() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw =
        start(&echo_config(&up).route(RouteSpec::new("post-only", "/p", "up").methods(&["POST"])))
            .await?;
    let c = gw.client();

    let r = c.head(gw.url("/e/1")).send().await?;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-request-id"));
    assert!(r.bytes().await?.is_empty(), "HEAD has no body");
    let seen = up.last_seen().expect("the upstream saw the HEAD request");
    assert_eq!(seen.method, "HEAD");
    assert_eq!(seen.path, "/e/1");

    // HEAD follows GET only: a POST-only route refuses it.
    let r = c.head(gw.url("/p")).send().await?;
    assert_eq!(r.status(), 405);
    assert_eq!(up.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn a_tls_only_route_is_404_on_the_plain_listener() -> Result<()> {
    let up = Upstream::echo("ledger").await;
    let gw = start(
        &ConfigBuilder::new()
            .bank_tls()
            .upstream("ledger", &up.url())
            .route(
                RouteSpec::new("ledger-read", "/internal/ledger/{path}", "ledger")
                    .listeners(&["tls"]),
            )
            .route(RouteSpec::new("plain-only", "/plain/{x}", "ledger").listeners(&["public"])),
    )
    .await?;
    let r = gw
        .client()
        .get(gw.url("/internal/ledger/balances"))
        .send()
        .await?;
    expect_problem(r, 404).await;
    assert_eq!(up.hits(), 0);

    let tls = gw.tls_client(&bank_certs_dir().join("ca.pem"))?;
    let r = tls
        .get(gw.tls_url("api.bank.test", "/internal/ledger/balances"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(up.hits(), 1);

    // And the other way round.
    let r = tls
        .get(gw.tls_url("api.bank.test", "/plain/1"))
        .send()
        .await?;
    expect_problem(r, 404).await;
    let r = gw.client().get(gw.url("/plain/1")).send().await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

#[tokio::test]
async fn dot_segments_are_a_400_problem() -> Result<()> {
    let (up, gw) = echo_gateway("up").await?;
    for target in [
        "/e/../admin",
        "/e/./1",
        "/x/../e/1",
        "/e/%2e%2e",
        "/e/%2E/1",
        "/e/.%2e/1",
    ] {
        let r = raw_get(gw.public_addr(), target, &[]).await?;
        let doc = assert_problem(r.status_code(), &r.headers, &r.body, 400);
        assert!(
            doc["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{target}"
        );
    }
    // Dots inside a segment are ordinary characters.
    let r = raw_get(gw.public_addr(), "/e/file.json", &[]).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(up.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn a_percent_sign_that_starts_no_escape_is_a_400_problem() -> Result<()> {
    let (up, gw) = echo_gateway("up").await?;
    for target in ["/e/%zz", "/e/1%", "/e/%4", "/e/%%41"] {
        let r = raw_get(gw.public_addr(), target, &[]).await?;
        let doc = assert_problem(r.status_code(), &r.headers, &r.body, 400);
        assert!(
            doc["detail"].as_str().is_some_and(|d| d.contains('%')),
            "{target}: {doc}"
        );
    }
    // Escapes pass as they came: the upstream decodes them.
    let r = raw_get(gw.public_addr(), "/e/a%20b%2F", &[]).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()?["path"], "/e/a%20b%2F");
    assert_eq!(up.hits(), 1);
    Ok(())
}
