//! Our HTTP/1.1 server on the wire: `Expect: 100-continue`, pipelining, unread bodies drained
//! so the connection lives on, ambiguous framing refused, HTTP/1.0 clients, and a client that
//! hangs up cancelling its request.

use crate::common::*;
use anyhow::Result;
use std::time::Duration;
use tollgate_testkit::raw::{RawConn, raw_request};
use tollgate_testkit::{ConfigBuilder, RouteSpec, Upstream, assert_problem};

async fn upload_gateway() -> Result<(Upstream, tollgate_testkit::Gateway)> {
    let sink = Upstream::sink().await;
    let gw = start(
        &ConfigBuilder::new()
            .upstream("sink", &sink.url())
            .route(
                RouteSpec::new("upload", "/upload", "sink")
                    .methods(&["POST"])
                    .max_body_bytes(1000),
            )
            .route(RouteSpec::new("read", "/read/{id}", "sink").methods(&["GET"])),
    )
    .await?;
    Ok((sink, gw))
}

#[tokio::test]
async fn continue_is_sent_only_when_the_body_is_wanted() -> Result<()> {
    let (sink, gw) = upload_gateway().await?;
    let addr = gw.public_addr();
    let mut conn = RawConn::connect(addr).await?;
    conn.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5\r\n\
             Expect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    assert_eq!(conn.read_response(SHORT).await?.status, 100);
    conn.send(b"hello").await?;
    let r = conn.read_response(SHORT).await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()?["bytes"], 5);
    assert_eq!(sink.body_bytes(), 5);

    // Declared over the route's limit: refused at once, without inviting the body. The client
    // may still send it, so the connection is not reused.
    conn.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5000\r\n\
             Expect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let r = conn.read_response(SHORT).await?;
    assert_problem(r.status_code(), &r.headers, &r.body, 413);
    assert_eq!(r.header("connection"), Some("close"));
    conn.wait_closed(SHORT).await?;
    assert_eq!(sink.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() -> Result<()> {
    let (_up, gw) = echo_gateway("up").await?;
    let addr = gw.public_addr();
    let mut conn = RawConn::connect(addr).await?;
    let mut batch = String::new();
    for id in 1..=5 {
        batch.push_str(&format!("GET /e/{id} HTTP/1.1\r\nHost: {addr}\r\n\r\n"));
    }
    conn.send(batch.as_bytes()).await?;
    for id in 1..=5 {
        let r = conn.read_response(SHORT).await?;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()?["path"], format!("/e/{id}"));
    }
    Ok(())
}

#[tokio::test]
async fn a_refused_body_is_read_off_and_the_connection_carries_on() -> Result<()> {
    let (sink, gw) = upload_gateway().await?;
    let addr = gw.public_addr();
    let mut conn = RawConn::connect(addr).await?;
    let body = "x".repeat(3000);
    // Over the limit, declared and then chunked: both refused, both bodies drained.
    conn.send(
        format!("POST /upload HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 3000\r\n\r\n{body}")
            .as_bytes(),
    )
    .await?;
    assert_eq!(conn.read_response(SHORT).await?.status, 413);
    conn.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n\
             bb8\r\n{body}\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    assert_eq!(conn.read_response(SHORT).await?.status, 413);
    // A body on a route that never reads it (an unknown path): drained too.
    conn.send(
        format!("POST /nowhere HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 4\r\n\r\nabcd")
            .as_bytes(),
    )
    .await?;
    assert_eq!(conn.read_response(SHORT).await?.status, 404);
    conn.send(format!("GET /read/1 HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let r = conn.read_response(SHORT).await?;
    assert_eq!(
        r.status, 200,
        "the connection still works after three refusals"
    );
    assert!(sink.body_bytes() <= 1000);
    Ok(())
}

#[tokio::test]
async fn ambiguous_or_malformed_heads_are_400_problems_and_close() -> Result<()> {
    let (up, gw) = upload_gateway().await?;
    let addr = gw.public_addr();
    for (what, req) in [
        (
            "both framings",
            format!(
                "POST /upload HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 4\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "two lengths",
            format!(
                "POST /upload HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 4\r\n\
                 Content-Length: 5\r\n\r\nabcde"
            ),
        ),
        (
            "unknown coding",
            format!("POST /upload HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ),
        ("garbage", "HELLO THERE\r\n\r\n".to_string()),
        (
            "bad field",
            format!("GET /read/1 HTTP/1.1\r\nHost: {addr}\r\nBad Field: x\r\n\r\n"),
        ),
        // RFC 9112 §3.2: exactly one Host, and a valid one.
        ("no host", "GET /read/1 HTTP/1.1\r\n\r\n".to_string()),
        (
            "two hosts",
            format!("GET /read/1 HTTP/1.1\r\nHost: {addr}\r\nHost: other\r\n\r\n"),
        ),
        (
            "user info in host",
            "GET /read/1 HTTP/1.1\r\nHost: user@example\r\n\r\n".to_string(),
        ),
    ] {
        let r = raw_request(addr, req.as_bytes(), SHORT).await?;
        assert_eq!(r.status, 400, "{what}");
        assert_problem(r.status_code(), &r.headers, &r.body, 400);
        assert!(r.header("x-request-id").is_some(), "{what}");
    }
    assert_eq!(up.hits(), 0);
    Ok(())
}

#[tokio::test]
async fn http10_clients_are_answered_and_closed() -> Result<()> {
    let (_up, gw) = echo_gateway("up").await?;
    let addr = gw.public_addr();
    let r = raw_request(addr, b"GET /e/1 HTTP/1.0\r\n\r\n", SHORT).await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()?["path"], "/e/1");
    assert!(r.header("transfer-encoding").is_none());
    // Keep-alive when asked for.
    let mut conn = RawConn::connect(addr).await?;
    for id in 1..=2 {
        conn.send(format!("GET /e/{id} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes())
            .await?;
        let r = conn.read_response(SHORT).await?;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    Ok(())
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_its_request() -> Result<()> {
    // A slow upstream behind a route that admits one request at a time: the slot comes back
    // when the waiting client goes away, not when the upstream would have answered.
    let up = Upstream::slow("slow", Duration::from_secs(3)).await;
    let gw = start(&ConfigBuilder::new().upstream("up", &up.url()).route(
        RouteSpec::new("slow", "/slow/{id}", "up").limits("{ concurrency: { max: 1, per: all } }"),
    ))
    .await?;
    let addr = gw.public_addr();
    let mut first = RawConn::connect(addr).await?;
    first
        .send(format!("GET /slow/1 HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = gw.client().get(gw.url("/slow/2")).send().await?;
    assert_eq!(r.status(), 429, "the first request holds the slot");
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Still within the first request's 3 s: only its cancellation frees the slot.
    let r = gw.client().get(gw.url("/slow/3")).send().await?;
    assert_eq!(
        r.status(),
        200,
        "the slot came back when the client hung up"
    );
    Ok(())
}

/// A small deterministic generator, so a failing input can be reproduced from its index.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test]
async fn random_and_mangled_heads_get_an_answer_or_a_close_never_a_crash() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, gw) = upload_gateway().await?;
    let addr = gw.public_addr();
    let valid = format!(
        "POST /upload HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 4\r\n\
         Transfer-Encoding: chunked\r\nX-Thing: a\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
    );
    let mut rng = XorShift(0x5eed_1234_abcd_0042);
    let mut tasks = Vec::new();
    for case in 0..300 {
        let mut bytes = valid.clone().into_bytes();
        match case % 3 {
            // Pure noise.
            0 => {
                let n = 1 + rng.below(600) as usize;
                bytes = (0..n).map(|_| rng.next() as u8).collect();
            }
            // A valid request with bytes flipped.
            1 => {
                for _ in 0..1 + rng.below(6) {
                    let i = rng.below(bytes.len() as u64) as usize;
                    bytes[i] = rng.next() as u8;
                }
            }
            // Cut short, then noise.
            _ => {
                let cut = rng.below(bytes.len() as u64) as usize;
                bytes.truncate(cut);
                let n = rng.below(64);
                bytes.extend((0..n).map(|_| rng.next() as u8));
            }
        }
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(&bytes).await?;
            // Whatever comes back before the gateway closes (or we stop waiting: a head cut
            // short waits for the rest until the header read timeout).
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got)).await;
            anyhow::Ok((case, got))
        }));
    }
    for t in tasks {
        let (case, got) = t.await??;
        if got.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 "),
            "case {case}: not an HTTP response: {text:?}"
        );
    }
    // Still serving.
    let before = up.hits();
    let r = gw.client().get(gw.url("/read/1")).send().await?;
    assert_eq!(r.status(), 200);
    assert_eq!(up.hits(), before + 1);
    Ok(())
}

/// An upstream that answers every request with a chunked body and a trailer field.
async fn trailer_upstream() -> Result<std::net::SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
                                      Trailer: x-sum\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 7\r\n\r\n";
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn response_trailers_reach_clients_that_accept_them_only() -> Result<()> {
    let up = trailer_upstream().await?;
    let gw = start(
        &ConfigBuilder::new()
            .upstream("up", &format!("http://{up}"))
            .get("t", "/t", "up"),
    )
    .await?;
    let addr = gw.public_addr();
    let with = raw_request(
        addr,
        format!("GET /t HTTP/1.1\r\nHost: {addr}\r\nTE: trailers\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        SHORT,
    )
    .await?;
    assert_eq!(with.status, 200);
    assert_eq!(with.body, b"abc");
    // Without `TE: trailers` the body still ends cleanly and the connection carries on.
    let mut conn = RawConn::connect(addr).await?;
    for _ in 0..2 {
        conn.send(format!("GET /t HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let r = conn.read_response(SHORT).await?;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
    }
    // The raw readers drop trailer fields, so look at the bytes on the wire.
    let wire = raw_bytes(addr, "TE: trailers\r\n").await?;
    assert!(wire.ends_with("\r\n0\r\nx-sum: 7\r\n\r\n"), "{wire:?}");
    let wire = raw_bytes(addr, "").await?;
    assert!(!wire.contains("x-sum"), "{wire:?}");
    assert!(wire.ends_with("\r\n0\r\n\r\n"), "{wire:?}");
    Ok(())
}

/// The raw response to `GET /t` with extra header lines, as text.
async fn raw_bytes(addr: std::net::SocketAddr, extra: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET /t HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(SHORT, s.read_to_end(&mut out)).await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
