//! Header handling: hop-by-hop removal both ways, X-Forwarded-*, X-Request-ID and traceparent.

use crate::common::*;
use anyhow::Result;
use std::collections::HashSet;
use tollgate_testkit::raw::raw_get;
use tollgate_testkit::{Upstream, expect_problem};

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() -> Result<()> {
    let (up, gw) = echo_gateway("up").await?;
    // Raw, so the client library cannot add or drop anything.
    let req = format!(
        "GET /e/1 HTTP/1.1\r\nHost: {}\r\n\
         Connection: close, X-Hop-A, x-hop-b\r\n\
         X-Hop-A: secret-a\r\nX-Hop-B: secret-b\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         X-Kept: yes\r\n\r\n",
        gw.public_addr()
    );
    let r = tollgate_testkit::raw::raw_request(gw.public_addr(), req.as_bytes(), SHORT).await?;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let echo = r.json()?;
    for h in [
        "connection",
        "x-hop-a",
        "x-hop-b",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
    ] {
        assert!(
            echo["headers"].get(h).is_none(),
            "`{h}` reached the upstream: {}",
            echo["headers"]
        );
    }
    assert_eq!(echoed(&echo, "x-kept"), Some("yes"));
    let seen = up.last_seen().expect("request seen");
    assert!(seen.headers.get("x-hop-a").is_none());
    Ok(())
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_not_forwarded() -> Result<()> {
    let up = Upstream::builder()
        .name("up")
        .header("connection", "x-up-hop")
        .header("x-up-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authenticate", "Basic realm=\"upstream\"")
        .header("x-up-kept", "yes")
        .spawn()
        .await;
    let gw = start(&echo_config(&up)).await?;
    for client in [gw.client(), gw.h2c_client()] {
        let r = client.get(gw.url("/e/1")).send().await?;
        assert_eq!(r.status(), 200);
        let h = r.headers();
        for name in ["x-up-hop", "keep-alive", "proxy-authenticate"] {
            assert!(h.get(name).is_none(), "`{name}` reached the client: {h:?}");
        }
        if let Some(c) = h.get("connection") {
            assert!(!c.to_str().unwrap_or("").contains("x-up-hop"), "{h:?}");
        }
        assert_eq!(h.get("x-up-kept").map(|v| v.as_bytes()), Some(&b"yes"[..]));
    }
    Ok(())
}

/// Upstream fields reach HTTP/1.1 clients as they arrived (never parsed into a map) and
/// HTTP/2 clients through the map: both must see the same end-to-end fields, our request id
/// instead of the upstream's, and one framing of their own.
#[tokio::test]
async fn upstream_fields_reach_both_protocols_once() -> Result<()> {
    let up = Upstream::builder()
        .name("up")
        .header("x-up-kept", "yes")
        .header("cache-control", "no-store")
        .header("x-request-id", "upstream-id")
        .header("keep-alive", "timeout=5")
        .spawn()
        .await;
    let gw = start(&echo_config(&up)).await?;

    let r = raw_get(gw.public_addr(), "/e/1", &[("x-request-id", "raw-1")]).await?;
    assert_eq!(r.status, 200);
    let h = &r.headers;
    assert_eq!(r.header("x-up-kept"), Some("yes"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        h.get_all("x-request-id").iter().collect::<Vec<_>>(),
        ["raw-1"]
    );
    assert_eq!(h.get_all("content-length").iter().count(), 1, "{h:?}");
    assert_eq!(h.get_all("date").iter().count(), 1, "{h:?}");
    assert!(h.get("keep-alive").is_none(), "{h:?}");
    assert_eq!(
        r.header("content-length")
            .and_then(|v| v.parse::<usize>().ok()),
        Some(r.body.len())
    );

    // HEAD: the upstream's length goes back, and no body.
    let mut s = tokio::net::TcpStream::connect(gw.public_addr()).await?;
    let req = format!(
        "HEAD /e/1 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        gw.public_addr()
    );
    tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes()).await?;
    let mut wire = Vec::new();
    tokio::time::timeout(
        SHORT,
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut wire),
    )
    .await??;
    let wire = String::from_utf8(wire)?;
    let (head, rest) = wire.split_once("\r\n\r\n").expect("a complete head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(rest.is_empty(), "a body after a HEAD response: {rest:?}");
    let lines: Vec<String> = head.lines().map(str::to_ascii_lowercase).collect();
    assert!(lines.iter().any(|l| l == "x-up-kept: yes"), "{head}");
    let lengths = lines
        .iter()
        .filter(|l| l.starts_with("content-length:"))
        .count();
    assert_eq!(lengths, 1, "{head}");

    let r = gw
        .h2c_client()
        .get(gw.url("/e/1"))
        .header("x-request-id", "h2-1")
        .send()
        .await?;
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let h = r.headers();
    assert_eq!(h.get("x-up-kept").map(|v| v.as_bytes()), Some(&b"yes"[..]));
    assert_eq!(
        h.get_all("x-request-id").iter().collect::<Vec<_>>(),
        ["h2-1"]
    );
    assert!(h.get("keep-alive").is_none(), "{h:?}");
    Ok(())
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_replaced() -> Result<()> {
    let (_up, gw) = echo_gateway("up").await?;
    let r = gw
        .client()
        .get(gw.url("/e/1"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.test")
        .header("x-request-id", "xff-untrusted")
        .send()
        .await?;
    let echo: serde_json::Value = r.json().await?;
    assert_eq!(echoed(&echo, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(echoed(&echo, "x-forwarded-proto"), Some("http"));
    let host = gw.public_addr().to_string();
    assert_eq!(echoed(&echo, "x-forwarded-host"), Some(host.as_str()));
    let line = gw
        .wait_access_log(SHORT, |l| l["request_id"] == "xff-untrusted")
        .await?;
    assert_eq!(line["client_ip"], "127.0.0.1");
    Ok(())
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_peer_are_extended() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(&echo_config(&up).server("trusted_proxies", "[127.0.0.0/8]")).await?;
    let c = gw.client();
    let r = c
        .get(gw.url("/e/1"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "xff-trusted")
        .send()
        .await?;
    let echo: serde_json::Value = r.json().await?;
    assert_eq!(echoed(&echo, "x-forwarded-for"), Some("6.6.6.6, 127.0.0.1"));
    assert_eq!(echoed(&echo, "x-forwarded-proto"), Some("https"));
    let line = gw
        .wait_access_log(SHORT, |l| l["request_id"] == "xff-trusted")
        .await?;
    assert_eq!(
        line["client_ip"], "6.6.6.6",
        "client IP is the right-most untrusted entry"
    );

    // Without a client header, the chain starts with the peer.
    let echo = get_json(&c, &gw.url("/e/2")).await?;
    assert_eq!(echoed(&echo, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(echoed(&echo, "x-forwarded-proto"), Some("http"));
    Ok(())
}

/// Sends `id` (if any) and returns (response X-Request-ID, upstream's X-Request-ID).
async fn request_id_roundtrip(
    gw: &tollgate_testkit::Gateway,
    id: Option<&str>,
) -> Result<(String, String)> {
    let mut req = gw.client().get(gw.url("/e/rid"));
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    let r = req.send().await?;
    assert_eq!(r.status(), 200);
    let resp_id = r.headers()["x-request-id"].to_str()?.to_string();
    let echo: serde_json::Value = r.json().await?;
    let up_id = echoed(&echo, "x-request-id").unwrap_or("").to_string();
    Ok((resp_id, up_id))
}

fn fresh_id_ok(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

#[tokio::test]
async fn x_request_id_is_kept_when_sane_and_replaced_otherwise() -> Result<()> {
    let (_up, gw) = echo_gateway("up").await?;
    let max = "a".repeat(128);
    for sane in ["abc-123", "Z.9_~:/@!", max.as_str()] {
        let (resp, up) = request_id_roundtrip(&gw, Some(sane)).await?;
        assert_eq!(resp, sane);
        assert_eq!(up, sane);
    }
    let too_long = "b".repeat(129);
    let mut fresh = HashSet::new();
    for insane in [too_long.as_str(), "has space", "tab\there", ""] {
        let (resp, up) = request_id_roundtrip(&gw, Some(insane)).await?;
        assert_ne!(resp, insane, "{insane:?} should be replaced");
        assert_eq!(resp, up, "the upstream and the client see the same id");
        assert!(fresh_id_ok(&resp), "{resp:?}");
        fresh.insert(resp);
    }
    for _ in 0..3 {
        let (resp, up) = request_id_roundtrip(&gw, None).await?;
        assert_eq!(resp, up);
        assert!(fresh_id_ok(&resp), "{resp:?}");
        fresh.insert(resp);
    }
    assert_eq!(fresh.len(), 7, "new ids are unique: {fresh:?}");

    // Gateway-made errors carry it too.
    let r = gw
        .client()
        .get(gw.url("/nowhere"))
        .header("x-request-id", "err-id-1")
        .send()
        .await?;
    assert_eq!(r.headers()["x-request-id"], "err-id-1");
    let doc = expect_problem(r, 404).await;
    assert_eq!(doc["request_id"], "err-id-1");
    Ok(())
}

#[tokio::test]
async fn a_client_with_a_non_ascii_request_id_gets_a_new_one() -> Result<()> {
    let (_up, gw) = echo_gateway("up").await?;
    let r = raw_get(gw.public_addr(), "/e/1", &[("X-Request-ID", "caf\u{e9}")]).await?;
    assert_eq!(r.status, 200);
    let resp = r.header("x-request-id").unwrap_or("").to_string();
    assert!(fresh_id_ok(&resp) && resp != "caf\u{e9}", "{resp:?}");
    let echo = r.json()?;
    assert_eq!(echoed(&echo, "x-request-id"), Some(resp.as_str()));
    Ok(())
}

/// (version, trace id, parent id, flags) of a valid version-00 traceparent.
fn parse_tp(v: &str) -> Option<(String, String, String, String)> {
    let p: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if p.len() != 4 || p[0] != "00" || !hex(p[1], 32) || !hex(p[2], 16) || !hex(p[3], 2) {
        return None;
    }
    if p[1].bytes().all(|b| b == b'0') || p[2].bytes().all(|b| b == b'0') {
        return None;
    }
    Some((p[0].into(), p[1].into(), p[2].into(), p[3].into()))
}

#[tokio::test]
async fn traceparent_reaches_the_upstream_as_a_child_of_the_same_trace() -> Result<()> {
    let (_up, gw) = echo_gateway("up").await?;
    let c = gw.client();
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c
        .get(gw.url("/e/1"))
        .header("traceparent", sent)
        .header("tracestate", "vendor=abc")
        .send()
        .await?;
    let echo: serde_json::Value = r.json().await?;
    assert_eq!(
        echoed(&echo, "tracestate"),
        Some("vendor=abc"),
        "the trace's state goes with it"
    );
    let got = echoed(&echo, "traceparent").unwrap_or("");
    let (_, trace, parent, flags) =
        parse_tp(got).unwrap_or_else(|| panic!("invalid traceparent upstream: {got:?}"));
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        parent, "00f067aa0ba902b7",
        "the gateway's span is a new child"
    );
    assert_eq!(flags, "01", "sampled flag kept");

    for invalid in [
        "garbage",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        let r = c
            .get(gw.url("/e/1"))
            .header("traceparent", invalid)
            .header("tracestate", "vendor=abc")
            .send()
            .await?;
        let echo: serde_json::Value = r.json().await?;
        assert_eq!(
            echoed(&echo, "tracestate"),
            None,
            "{invalid}: the state of a trace we did not continue"
        );
        let got = echoed(&echo, "traceparent").unwrap_or("");
        let (_, trace, _, _) = parse_tp(got)
            .unwrap_or_else(|| panic!("{invalid}: invalid traceparent upstream: {got:?}"));
        assert_ne!(
            trace, "4bf92f3577b34da6a3ce929d0e0e4736",
            "{invalid}: a new trace is started"
        );
    }

    // No traceparent: the upstream still gets one, a different trace each time.
    let a = get_json(&c, &gw.url("/e/1")).await?;
    let b = get_json(&c, &gw.url("/e/2")).await?;
    let ta = parse_tp(echoed(&a, "traceparent").unwrap_or("")).expect("valid traceparent");
    let tb = parse_tp(echoed(&b, "traceparent").unwrap_or("")).expect("valid traceparent");
    assert_ne!(ta.1, tb.1);
    Ok(())
}

/// The authority the client addressed is the request target's when it has one: HTTP/2's
/// `:authority` (a `Host` naming another entity makes the request malformed, RFC 9113
/// §8.3.1), or an HTTP/1.1 absolute-form target, whose `Host` is ignored (RFC 9112 §3.2.2).
#[tokio::test]
async fn x_forwarded_host_is_the_targets_authority() -> Result<()> {
    let (_up, gw) = echo_gateway("up").await?;
    let h2 = gw.h2c_client();
    let echo: serde_json::Value = h2.get(gw.url("/e/1")).send().await?.json().await?;
    assert_eq!(
        echoed(&echo, "x-forwarded-host"),
        Some(gw.public_addr().to_string().as_str())
    );
    let r = h2
        .get(gw.url("/e/1"))
        .header("host", "evil.example")
        .send()
        .await?;
    expect_problem(r, 400).await;

    let r = tollgate_testkit::raw::raw_request(
        gw.public_addr(),
        b"GET http://abs.example/e/1 HTTP/1.1\r\nHost: hdr.example\r\nConnection: close\r\n\r\n",
        std::time::Duration::from_secs(10),
    )
    .await?;
    assert_eq!(r.status, 200);
    assert_eq!(echoed(&r.json()?, "x-forwarded-host"), Some("abs.example"));
    Ok(())
}
