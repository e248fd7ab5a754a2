//! Streaming: 1 GiB through the gateway in each direction while its memory stays small. The
//! bodies are generated on the fly on both ends; nothing holds them whole.

use crate::common::*;
use anyhow::Result;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tollgate_testkit::{
    Behaviour, ConfigBuilder, Gateway, RouteSpec, Upstream, UpstreamSpec, client_builder, rss_of,
};

const GIB: u64 = 1 << 30;
const RSS_LIMIT: u64 = 200 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
const PAUSE: Duration = Duration::from_millis(1500);
static FILL: [u8; CHUNK] = [b'u'; CHUNK];

/// Samples a process's RSS every 50 ms until dropped; keeps the maximum.
struct RssWatch {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let max = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(rss) = rss_of(pid) {
                    m.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self { max, stop }
    }

    fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn mib(n: u64) -> f64 {
    n as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1gib_request_body_streams_through_with_bounded_memory() -> Result<()> {
    // The upstream waits before reading: a gateway that buffered instead of applying
    // backpressure would swallow the client's data meanwhile.
    let sink = Upstream::builder()
        .name("sink")
        .behaviour(Behaviour::Sink)
        .read_pause(PAUSE)
        .spawn()
        .await;
    let gw = start(
        &ConfigBuilder::new()
            .upstream_spec(
                UpstreamSpec::new("sink")
                    .target(&sink.url())
                    .response_timeout("10m"),
            )
            .route(RouteSpec::new("upload", "/upload", "sink").methods(&["POST"])),
    )
    .await?;
    let watch = RssWatch::start(gw.pid());
    let chunks = (GIB / CHUNK as u64) as usize;
    let stream = futures_util::stream::iter(
        (0..chunks).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&FILL))),
    );
    let client = client_builder().timeout(Duration::from_secs(600)).build()?;
    let started = Instant::now();
    let r = client
        .post(gw.url("/upload"))
        .header("content-length", GIB.to_string())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?;
    let status = r.status();
    let v: serde_json::Value = r.json().await?;
    let elapsed = started.elapsed();
    let peak = watch.max();
    eprintln!(
        "upload: 1 GiB in {elapsed:.1?} ({:.0} MiB/s), gateway peak RSS {:.1} MiB",
        1024.0 / elapsed.as_secs_f64(),
        mib(peak)
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["bytes"], GIB, "the upstream received every byte: {v}");
    assert_eq!(sink.body_bytes(), GIB);
    assert!(peak > 0, "RSS was sampled");
    assert!(
        peak < RSS_LIMIT,
        "gateway RSS peaked at {:.1} MiB",
        mib(peak)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1gib_response_body_streams_through_with_bounded_memory() -> Result<()> {
    let (_up, gw) = download_gateway(GIB).await?;
    let watch = RssWatch::start(gw.pid());
    let client = client_builder().timeout(Duration::from_secs(600)).build()?;
    let started = Instant::now();
    let mut r = client.get(gw.url("/download")).send().await?;
    assert_eq!(r.status(), 200);
    let mut total: u64 = 0;
    // Read a little, then stall: a gateway without backpressure would buffer the upstream's
    // output meanwhile.
    if let Some(chunk) = r.chunk().await? {
        total += chunk.len() as u64;
    }
    tokio::time::sleep(PAUSE).await;
    let during_pause = watch.max();
    while let Some(chunk) = r.chunk().await? {
        total += chunk.len() as u64;
    }
    let elapsed = started.elapsed();
    let peak = watch.max();
    eprintln!(
        "download: 1 GiB in {elapsed:.1?} ({:.0} MiB/s), gateway peak RSS {:.1} MiB",
        1024.0 / elapsed.as_secs_f64(),
        mib(peak)
    );
    assert_eq!(total, GIB);
    assert!(peak > 0, "RSS was sampled");
    assert!(
        during_pause < RSS_LIMIT,
        "gateway RSS reached {:.1} MiB while the client stalled",
        mib(during_pause)
    );
    assert!(
        peak < RSS_LIMIT,
        "gateway RSS peaked at {:.1} MiB",
        mib(peak)
    );
    let line = gw
        .wait_access_log(SHORT, |l| l["route"] == "download")
        .await?;
    assert_eq!(line["bytes_out"], GIB);
    assert!(line.get("aborted").is_none(), "a complete response: {line}");
    Ok(())
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_is_logged_as_aborted() -> Result<()> {
    const SIZE: u64 = 64 << 20;
    let (_up, gw) = download_gateway(SIZE).await?;
    let mut r = gw.client().get(gw.url("/download")).send().await?;
    assert_eq!(r.status(), 200);
    assert!(r.chunk().await?.is_some());
    // Dropping a response mid-body closes its connection.
    drop(r);
    let line = gw
        .wait_access_log(SHORT, |l| l["route"] == "download")
        .await?;
    assert_eq!(line["aborted"], true, "{line}");
    assert_eq!(line["status"], 200);
    let sent = line["bytes_out"].as_u64().expect("bytes_out is a number");
    assert!(sent > 0 && sent < SIZE, "{line}");
    Ok(())
}

/// A gateway whose `GET /download` answers with `size` generated bytes.
async fn download_gateway(size: u64) -> Result<(Upstream, Gateway)> {
    let up = Upstream::streaming(size).await;
    let gw = start(&ConfigBuilder::new().upstream("big", &up.url()).get(
        "download",
        "/download",
        "big",
    ))
    .await?;
    Ok((up, gw))
}

/// A request body is the client's to send and the response the upstream's to give: a slow but
/// steady upload outlasts the upstream's response timeout, and one that stops is the client's
/// fault (408), not a 504.
#[tokio::test]
async fn a_slow_upload_is_timed_as_the_clients_and_a_stalled_one_is_a_408() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::echo("up").await;
    let gw = start(
        &ConfigBuilder::new()
            .server("header_read_timeout", "2s")
            .upstream_spec(
                UpstreamSpec::new("up")
                    .target(&up.url())
                    .response_timeout("1s"),
            )
            .route(RouteSpec::new("upload", "/upload", "up").methods(&["POST"])),
    )
    .await?;
    let head = |len: usize| {
        format!(
            "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
            gw.public_addr()
        )
    };
    let read_all = |mut s: tokio::net::TcpStream| async move {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await??;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };

    // Six bytes over 2.5 s: longer than the upstream's 1 s, never idle for 2 s.
    let mut s = tokio::net::TcpStream::connect(gw.public_addr()).await?;
    s.write_all(head(6).as_bytes()).await?;
    for b in b"abcdef" {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.write_all(&[*b]).await?;
    }
    let text = read_all(s).await?;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("abcdef"), "{text}");

    // Half a body, then nothing: a 408 problem once the client has been idle for 2 s.
    let mut s = tokio::net::TcpStream::connect(gw.public_addr()).await?;
    s.write_all(head(10).as_bytes()).await?;
    s.write_all(b"abcde").await?;
    let text = read_all(s).await?;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request-timeout"), "{text}");
    let line = gw.wait_access_log(SHORT, |l| l["status"] == 408).await?;
    assert_eq!(line["fault"], "client", "{line}");
    Ok(())
}

/// The client's time for its body is its own, also when the upstream's response timeout is
/// much longer: a pause past `header_read_timeout` is a 408 at that point, not when the
/// response timeout runs out, and not a 200 once the client resumes.
#[tokio::test]
async fn a_body_pause_is_bounded_by_the_clients_timeout_not_the_upstreams() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::echo("up").await;
    let gw = start(
        &ConfigBuilder::new()
            .server("header_read_timeout", "1s")
            .upstream_spec(
                UpstreamSpec::new("up")
                    .target(&up.url())
                    .response_timeout("20s"),
            )
            .route(RouteSpec::new("upload", "/upload", "up").methods(&["POST"])),
    )
    .await?;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: 10\r\nConnection: close\r\n\r\n",
        gw.public_addr()
    );
    for resume_after in [None, Some(Duration::from_millis(2500))] {
        let mut s = tokio::net::TcpStream::connect(gw.public_addr()).await?;
        s.write_all(head.as_bytes()).await?;
        s.write_all(b"abcde").await?;
        let started = std::time::Instant::now();
        if let Some(d) = resume_after {
            tokio::time::sleep(d).await;
            // The gateway may have closed already; what it answered is what counts.
            let _ = s.write_all(b"fghij").await;
        }
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await??;
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "resume after {resume_after:?}: {text}"
        );
        if resume_after.is_none() {
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(5),
                "the 408 comes at the client's 1 s, not the upstream's 20 s: {took:?}"
            );
        }
    }
    Ok(())
}
