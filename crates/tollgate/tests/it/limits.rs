//! Request limits: 414, 431, 413 (declared and chunked), header read timeout, idle timeout and
//! the connection cap.

use crate::common::*;
use anyhow::Result;
use bytes::Bytes;
use std::time::{Duration, Instant};
use tollgate_testkit::raw::{RawConn, raw_get};
use tollgate_testkit::{ConfigBuilder, RouteSpec, Upstream, assert_problem, expect_problem};

#[tokio::test]
async fn a_too_long_request_target_is_a_414_problem() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(&echo_config(&up).server("max_uri_bytes", "256")).await?;
    let c = gw.client();
    let r = c
        .get(gw.url(&format!("/e/{}", "a".repeat(300))))
        .send()
        .await?;
    expect_problem(r, 414).await;
    let r = c
        .get(gw.url(&format!("/e/1?q={}", "q".repeat(300))))
        .send()
        .await?;
    expect_problem(r, 414).await;
    let r = c
        .get(gw.url(&format!("/e/{}", "a".repeat(200))))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(up.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn too_many_request_headers_is_a_431_problem() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(&echo_config(&up).server("max_headers", "10")).await?;
    for c in [gw.client(), gw.h2c_client()] {
        let mut req = c.get(gw.url("/e/1"));
        for i in 0..20 {
            req = req.header(format!("x-h-{i}"), "v");
        }
        expect_problem(req.send().await?, 431).await;
    }
    let c = gw.client();
    let mut req = c.get(gw.url("/e/1"));
    for i in 0..4 {
        req = req.header(format!("x-h-{i}"), "v");
    }
    assert_eq!(req.send().await?.status(), 200);
    assert_eq!(up.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn too_large_request_headers_is_a_431_problem() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(&echo_config(&up).server("max_header_bytes", "1024")).await?;
    let c = gw.client();
    let r = c
        .get(gw.url("/e/1"))
        .header("x-big", "b".repeat(2000))
        .send()
        .await?;
    expect_problem(r, 431).await;
    // Several fields that add up past the limit.
    let mut req = c.get(gw.url("/e/1"));
    for i in 0..4 {
        req = req.header(format!("x-part-{i}"), "p".repeat(300));
    }
    expect_problem(req.send().await?, 431).await;
    let r = c
        .get(gw.url("/e/1"))
        .header("x-small", "s".repeat(200))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(up.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn a_declared_body_over_the_route_limit_is_a_413_problem() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(
        &ConfigBuilder::new()
            .upstream("up", &up.url())
            .server("max_body_bytes", "2000")
            .route(
                RouteSpec::new("small", "/small", "up")
                    .methods(&["POST"])
                    .max_body_bytes(1000),
            )
            .route(RouteSpec::new("default", "/default", "up").methods(&["POST"])),
    )
    .await?;
    let c = gw.client();
    let r = c
        .post(gw.url("/small"))
        .body(vec![b'x'; 1001])
        .send()
        .await?;
    expect_problem(r, 413).await;
    let r = c
        .post(gw.url("/default"))
        .body(vec![b'x'; 2001])
        .send()
        .await?;
    expect_problem(r, 413).await;
    assert_eq!(up.hits(), 0, "refused before reaching the upstream");

    // At the limit is fine; the route's own limit wins over the server default.
    let r = c
        .post(gw.url("/small"))
        .body(vec![b'x'; 1000])
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = c
        .post(gw.url("/default"))
        .body(vec![b'x'; 2000])
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

fn chunked_body(chunks: usize, size: usize) -> reqwest::Body {
    let chunk = Bytes::from(vec![b'c'; size]);
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test]
async fn a_chunked_body_over_the_route_limit_is_a_413_problem() -> Result<()> {
    let sink = Upstream::sink().await;
    let gw = start(
        &ConfigBuilder::new().upstream("sink", &sink.url()).route(
            RouteSpec::new("upload", "/upload", "sink")
                .methods(&["POST"])
                .max_body_bytes(1000),
        ),
    )
    .await?;
    let c = gw.client();
    // 256 KiB without Content-Length.
    let r = c
        .post(gw.url("/upload"))
        .body(chunked_body(16, 16 * 1024))
        .send()
        .await?;
    expect_problem(r, 413).await;
    assert!(
        sink.body_bytes() <= 1000,
        "the upstream received {} body bytes past a 1000-byte limit",
        sink.body_bytes()
    );

    // Under the limit, chunked, goes through whole.
    let before = sink.body_bytes();
    let r = c
        .post(gw.url("/upload"))
        .body(chunked_body(5, 100))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["bytes"], 500);
    assert_eq!(sink.body_bytes() - before, 500);
    Ok(())
}

#[tokio::test]
async fn a_stalled_request_head_is_cut_off_after_header_read_timeout() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(&echo_config(&up).server("header_read_timeout", "1s")).await?;
    let mut conn = RawConn::connect(gw.public_addr()).await?;
    conn.send(
        format!(
            "GET /e/1 HTTP/1.1\r\nHost: {}\r\nX-Slow: ",
            gw.public_addr()
        )
        .as_bytes(),
    )
    .await?;
    let closed_after = conn.wait_closed(Duration::from_secs(5)).await?;
    assert!(
        closed_after >= Duration::from_millis(800) && closed_after < Duration::from_millis(2500),
        "closed after {closed_after:?}; header_read_timeout is 1 s"
    );
    assert_eq!(up.hits(), 0);
    // A prompt client is unaffected.
    assert_eq!(gw.client().get(gw.url("/e/1")).send().await?.status(), 200);
    Ok(())
}

#[tokio::test]
async fn a_silent_connection_is_cut_off_after_header_read_timeout() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(&echo_config(&up).server("header_read_timeout", "1s")).await?;
    // Connects and sends nothing at all (slowloris): it must not hold a connection slot forever.
    let mut conn = RawConn::connect(gw.public_addr()).await?;
    let closed_after = conn.wait_closed(Duration::from_secs(4)).await?;
    assert!(
        closed_after < Duration::from_millis(2500),
        "closed after {closed_after:?}"
    );
    // Fewer than 24 bytes that could still be the HTTP/2 preface.
    let mut conn = RawConn::connect(gw.public_addr()).await?;
    conn.send(b"PRI * HTTP/2.0\r\n").await?;
    let closed_after = conn.wait_closed(Duration::from_secs(4)).await?;
    assert!(
        closed_after < Duration::from_millis(2500),
        "closed after {closed_after:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_header_read_timeout() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(&echo_config(&up).server("header_read_timeout", "1s")).await?;
    let mut conn = RawConn::connect(gw.public_addr()).await?;
    conn.send(format!("GET /e/1 HTTP/1.1\r\nHost: {}\r\n\r\n", gw.public_addr()).as_bytes())
        .await?;
    let r = conn.read_response(SHORT).await?;
    assert_eq!(r.status, 200);
    let closed_after = conn.wait_closed(Duration::from_secs(5)).await?;
    assert!(
        closed_after < Duration::from_millis(2500),
        "idle connection closed after {closed_after:?}"
    );
    Ok(())
}

#[tokio::test]
async fn header_read_timeout_counts_from_each_wait_not_from_the_first() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(&echo_config(&up).server("header_read_timeout", "1s")).await?;
    let mut conn = RawConn::connect(gw.public_addr()).await?;
    let req = format!("GET /e/1 HTTP/1.1\r\nHost: {}\r\n\r\n", gw.public_addr());
    // Requests 700 ms apart keep the connection for well past one timeout: each wait has its
    // own second, however long ago the connection's timer was first armed.
    for _ in 0..4 {
        conn.send(req.as_bytes()).await?;
        assert_eq!(conn.read_response(SHORT).await?.status, 200);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    conn.send(req.as_bytes()).await?;
    assert_eq!(conn.read_response(SHORT).await?.status, 200);
    let closed_after = conn.wait_closed(Duration::from_secs(5)).await?;
    assert!(
        closed_after >= Duration::from_millis(800) && closed_after < Duration::from_millis(2500),
        "idle connection closed after {closed_after:?}; header_read_timeout is 1 s"
    );
    assert_eq!(up.hits(), 5);
    Ok(())
}

#[tokio::test]
async fn max_connections_holds_further_connections_until_one_closes() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(&echo_config(&up).server("max_connections", "2")).await?;
    let addr = gw.public_addr();
    let req = format!("GET /e/1 HTTP/1.1\r\nHost: {addr}\r\n\r\n");

    let mut a = RawConn::connect(addr).await?;
    a.send(req.as_bytes()).await?;
    assert_eq!(a.read_response(SHORT).await?.status, 200);
    let mut b = RawConn::connect(addr).await?;
    b.send(req.as_bytes()).await?;
    assert_eq!(b.read_response(SHORT).await?.status, 200);

    // The third connection is queued by the kernel, not served.
    let mut c = RawConn::connect(addr).await?;
    c.send(req.as_bytes()).await?;
    let waited = c.read_response(Duration::from_millis(1000)).await;
    assert!(
        waited.is_err(),
        "a third connection was served while two were open: {waited:?}"
    );
    assert_eq!(up.hits(), 2);

    // Both kept-open connections still work.
    a.send(req.as_bytes()).await?;
    assert_eq!(a.read_response(SHORT).await?.status, 200);

    let closed = Instant::now();
    drop(a);
    let r = c.read_response(SHORT).await?;
    assert_eq!(r.status, 200);
    assert!(
        closed.elapsed() < Duration::from_secs(2),
        "served {:?} after a slot freed",
        closed.elapsed()
    );
    drop(b);
    Ok(())
}

#[tokio::test]
async fn header_fields_past_the_limit_get_a_problem_document_and_past_the_parser_a_bare_431()
-> Result<()> {
    // Default limit: 64 fields, checked by the gateway (problem document with X-Request-ID)
    // up to the parser's own 100-field array; beyond that the parser refuses the head.
    let up = Upstream::echo("up").await;
    let gw = start(&echo_config(&up)).await?;
    for count in [65, 90] {
        let names: Vec<String> = (0..count).map(|i| format!("x-h-{i}")).collect();
        let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let r = raw_get(gw.public_addr(), "/e/1", &fields).await?;
        assert!(
            r.header("x-request-id").is_some(),
            "{count} fields: 431 without X-Request-ID: {:?}",
            r.headers
        );
        assert_problem(r.status_code(), &r.headers, &r.body, 431);
    }
    let names: Vec<String> = (0..300).map(|i| format!("x-h-{i}")).collect();
    let fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let r = raw_get(gw.public_addr(), "/e/1", &fields).await?;
    assert_eq!(r.status_code(), 431, "{:?}", r.headers);
    assert_eq!(up.hits(), 0);
    Ok(())
}

/// An HTTP/2 connection without streams is idle like an HTTP/1.1 one between requests, and
/// is closed after `header_read_timeout`: otherwise silent connections would hold every
/// connection slot.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_header_read_timeout() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::echo("up").await;
    let gw = start(&echo_config(&up).server("header_read_timeout", "1s")).await?;
    let mut s = tokio::net::TcpStream::connect(gw.public_addr()).await?;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await?;
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    // A GOAWAY frame (type 7) came before the close.
    assert!(buf.windows(4).any(|w| w[3] == 7 && w[0] == 0), "{buf:?}");
    Ok(())
}
