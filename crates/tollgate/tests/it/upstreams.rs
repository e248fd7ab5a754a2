//! Upstream pools: round robin, weights, keep-alive reuse, and failures turned into 502 / 504
//! problems within their timeouts.

use crate::common::*;
use anyhow::Result;
use std::time::{Duration, Instant};
use tollgate_testkit::{
    Blackhole, ConfigBuilder, Upstream, UpstreamSpec, dead_addr, expect_problem, metric_value,
};

#[tokio::test]
async fn round_robin_alternates_between_two_targets() -> Result<()> {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let gw = start(
        &ConfigBuilder::new()
            .upstream_spec(UpstreamSpec::new("pool").target(&a.url()).target(&b.url()))
            .get("echo", "/e/{id}", "pool"),
    )
    .await?;
    let c = gw.client();
    let mut order = Vec::new();
    for i in 0..20 {
        let echo = get_json(&c, &gw.url(&format!("/e/{i}"))).await?;
        order.push(echo["service"].as_str().unwrap_or("?").to_string());
    }
    let expected: Vec<&str> = (0..20)
        .map(|i| if i % 2 == 0 { "a" } else { "b" })
        .collect();
    assert_eq!(order, expected);
    assert_eq!((a.hits(), b.hits()), (10, 10));
    Ok(())
}

#[tokio::test]
async fn weights_3_to_1_split_400_requests_exactly() -> Result<()> {
    let a = Upstream::echo("heavy").await;
    let b = Upstream::echo("light").await;
    let gw = start(
        &ConfigBuilder::new()
            .upstream_spec(
                UpstreamSpec::new("pool")
                    .weighted(&a.url(), 3)
                    .weighted(&b.url(), 1),
            )
            .get("echo", "/e/{id}", "pool"),
    )
    .await?;
    // The schedule is a per-upstream counter, so any 400 picks split exactly, even concurrently.
    let mut tasks = Vec::new();
    for t in 0..4 {
        let c = gw.client();
        let base = gw.public_url();
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let r = c.get(format!("{base}/e/{t}-{i}")).send().await?;
                anyhow::ensure!(r.status() == 200, "status {}", r.status());
                r.bytes().await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    assert_eq!((a.hits(), b.hits()), (300, 100));
    Ok(())
}

#[tokio::test]
async fn keep_alive_connections_to_the_upstream_are_reused() -> Result<()> {
    let (up, gw) = echo_gateway("up").await?;
    let c = gw.client();
    for i in 0..50 {
        get_json(&c, &gw.url(&format!("/e/{i}"))).await?;
    }
    assert_eq!(up.hits(), 50);
    assert!(
        up.connections() <= 2,
        "50 sequential requests used {} upstream connections",
        up.connections()
    );
    Ok(())
}

#[tokio::test]
async fn a_refusing_upstream_is_a_502_problem_at_once() -> Result<()> {
    let dead = dead_addr();
    let gw = start(
        &ConfigBuilder::new()
            .upstream_spec(
                UpstreamSpec::new("dead")
                    .target(&format!("http://{dead}"))
                    .connect_timeout("1s"),
            )
            .get("dead", "/dead", "dead"),
    )
    .await?;
    let started = Instant::now();
    let r = gw.client().get(gw.url("/dead")).send().await?;
    let elapsed = started.elapsed();
    let doc = expect_problem(r, 502).await;
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    let text = doc.to_string();
    assert!(
        !text.contains(&dead.port().to_string()),
        "problem leaks the upstream address: {text}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_problem_within_connect_timeout() -> Result<()> {
    let hole = Blackhole::new().await?;
    let gw = start(
        &ConfigBuilder::new()
            .upstream_spec(
                UpstreamSpec::new("hole")
                    .target(&hole.url())
                    .connect_timeout("1s"),
            )
            .get("hole", "/hole", "hole"),
    )
    .await?;
    let started = Instant::now();
    let r = gw.client().get(gw.url("/hole")).send().await?;
    let elapsed = started.elapsed();
    expect_problem(r, 502).await;
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(1500),
        "502 after {elapsed:?}; expected connect timeout (1 s) + at most 0.5 s"
    );
    Ok(())
}

#[tokio::test]
async fn a_slow_upstream_is_a_504_problem_within_response_timeout_and_the_gateway_stays_healthy()
-> Result<()> {
    let slow = Upstream::slow("slow", Duration::from_secs(4)).await;
    let hang = Upstream::hanging().await;
    let fast = Upstream::echo("fast").await;
    let gw = start(
        &ConfigBuilder::new()
            .upstream_spec(
                UpstreamSpec::new("slow")
                    .target(&slow.url())
                    .response_timeout("1s"),
            )
            .upstream_spec(
                UpstreamSpec::new("hang")
                    .target(&hang.url())
                    .response_timeout("1s"),
            )
            .upstream("fast", &fast.url())
            .get("slow", "/slow", "slow")
            .get("hang", "/hang", "hang")
            .get("fast", "/fast", "fast"),
    )
    .await?;
    let c = gw.client();
    for path in ["/slow", "/hang"] {
        let started = Instant::now();
        let r = c.get(gw.url(path)).send().await?;
        let elapsed = started.elapsed();
        expect_problem(r, 504).await;
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(1500),
            "{path}: 504 after {elapsed:?}; expected response timeout (1 s) + at most 0.5 s"
        );
    }
    assert_eq!((slow.hits(), hang.hits()), (1, 1));

    // Still healthy: other routes, the slow route again, and the health endpoint.
    for _ in 0..5 {
        let echo = get_json(&c, &gw.url("/fast")).await?;
        assert_eq!(echo["service"], "fast");
    }
    let r = c.get(gw.url("/slow")).send().await?;
    expect_problem(r, 504).await;
    let r = c
        .get(format!("{}/health/live", gw.admin_url()))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

#[tokio::test]
async fn upstream_error_statuses_pass_through_untouched() -> Result<()> {
    let up = Upstream::builder()
        .name("failing")
        .status(503)
        .header("retry-after", "7")
        .spawn()
        .await;
    let gw = start(&echo_config(&up)).await?;
    let r = gw.client().get(gw.url("/e/1")).send().await?;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(
        r.headers()["content-type"],
        "application/json",
        "the upstream's own body, not a problem"
    );
    let echo: serde_json::Value = r.json().await?;
    assert_eq!(echo["service"], "failing");
    Ok(())
}

#[tokio::test]
async fn http2_streams_share_a_targets_request_slots() -> Result<()> {
    let slow = Upstream::slow("slow", Duration::from_millis(400)).await;
    let big = Upstream::streaming(1 << 30).await;
    let gw = start(
        &ConfigBuilder::new()
            .upstream_spec(
                UpstreamSpec::new("slow")
                    .target(&slow.url())
                    .set("max_requests_per_target", "4"),
            )
            .upstream_spec(
                UpstreamSpec::new("big")
                    .target(&big.url())
                    .response_timeout("1s")
                    .set("max_requests_per_target", "2"),
            )
            .get("slow", "/slow", "slow")
            .get("big", "/big", "big"),
    )
    .await?;
    let c = gw.h2c_client();

    // Sixteen streams at once on one connection reach the upstream four at a time, over no
    // more than four connections, and all are answered.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, url) = (c.clone(), gw.url("/slow"));
        tasks.push(tokio::spawn(async move {
            c.get(url).send().await.map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await??, 200);
    }
    assert_eq!(slow.hits(), 16);
    assert!(
        slow.connections() <= 4,
        "{} connections",
        slow.connections()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1600),
        "four rounds of 400 ms, not {:?}",
        started.elapsed()
    );

    // Two downloads whose bodies the client does not read hold both slots; a third request
    // waits its response timeout for one, then gets a 503 to retry.
    let held = [
        c.get(gw.url("/big")).send().await?,
        c.get(gw.url("/big")).send().await?,
    ];
    assert!(held.iter().all(|r| r.status() == 200));
    let started = Instant::now();
    let r = c.get(gw.url("/big")).send().await?;
    assert_eq!(r.headers()["retry-after"], "1");
    let doc = expect_problem(r, 503).await;
    assert_eq!(doc["type"], "https://tollgate.dev/problems/upstream-busy");
    assert!(started.elapsed() >= Duration::from_millis(1000));
    let labels = [("upstream", "big"), ("kind", "upstream-busy")];
    let busy = metric_value(
        &gw.metrics().await?,
        "tollgate_upstream_errors_total",
        &labels,
    );
    assert_eq!(busy, Some(1.0));

    // Abandoned bodies give their slots back.
    drop(held);
    let r = c.get(gw.url("/big")).send().await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

#[tokio::test]
async fn an_http2_client_that_stops_reading_is_cut_off_and_its_slots_freed() -> Result<()> {
    let big = Upstream::streaming(1 << 30).await;
    let slow = Upstream::slow("slow", Duration::from_millis(2500)).await;
    let gw = start(
        &ConfigBuilder::new()
            .upstream_spec(
                UpstreamSpec::new("big")
                    .target(&big.url())
                    .set("max_requests_per_target", "2"),
            )
            .upstream("slow", &slow.url())
            .get("big", "/big", "big")
            .get("slow", "/slow", "slow")
            .server("send_timeout", "1s"),
    )
    .await?;

    // Waiting on the upstream longer than send_timeout is not the client's stall.
    let r = gw.h2c_client().get(gw.url("/slow")).send().await?;
    assert_eq!(r.status(), 200);
    assert!(!r.bytes().await?.is_empty());

    // Two downloads a client never reads hold both slots until the gateway gives up on that
    // connection; then another client's download gets a slot, long before its own response
    // timeout (30 s) would have turned it into a 503.
    let stalled = gw.h2c_client();
    let held = [
        stalled.get(gw.url("/big")).send().await?,
        stalled.get(gw.url("/big")).send().await?,
    ];
    assert!(held.iter().all(|r| r.status() == 200));
    let started = Instant::now();
    let r = gw.h2c_client().get(gw.url("/big")).send().await?;
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a slot after {:?}",
        started.elapsed()
    );
    // The stalled client's downloads end in an error, not a gigabyte each.
    for r in held {
        assert!(r.bytes().await.is_err(), "a cut-off body");
    }
    Ok(())
}
