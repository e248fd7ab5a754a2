//! Graceful shutdown on SIGTERM.

use crate::common::*;
use anyhow::Result;
use std::time::{Duration, Instant};
use tollgate_testkit::{Gateway, Signal, Upstream, eventually};

/// Sends SIGTERM and waits at most `within` for an exit with status 0; how long it took.
async fn terminate(gw: &mut Gateway, within: Duration) -> Result<Duration> {
    let term_at = Instant::now();
    gw.send_signal(Signal::Term)?;
    let exit = gw
        .wait_exit(within)
        .await
        .ok_or_else(|| anyhow::anyhow!("no exit within {within:?} of SIGTERM"))?;
    anyhow::ensure!(exit.success(), "exit status {exit}");
    Ok(term_at.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0() -> Result<()> {
    let up = Upstream::slow("slow", Duration::from_millis(1500)).await;
    let mut gw = start(&echo_config(&up)).await?;
    let addr = gw.public_addr();
    let client = gw.client();
    let url = gw.url("/e/in-flight");
    let in_flight = tokio::spawn(async move {
        let r = client.get(url).send().await?;
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await?;
        anyhow::Ok((status, body, Instant::now()))
    });
    let h2 = gw.h2c_client();
    let url = gw.url("/e/in-flight-h2");
    let in_flight_h2 = tokio::spawn(async move {
        let r = h2.get(url).send().await?;
        anyhow::Ok((r.status().as_u16(), r.version()))
    });
    // Wait until both requests are at the upstream, then ask the gateway to stop.
    assert!(
        eventually(SHORT, || async { (up.hits() == 2).then_some(()) })
            .await
            .is_some(),
        "the requests never reached the upstream"
    );
    let term_at = Instant::now();
    gw.send_signal(Signal::Term)?;

    let refused = eventually(Duration::from_secs(1), || async {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(term_at.elapsed()),
            _ => None,
        }
    })
    .await;
    let refused_after = refused.expect("new connections are still accepted 1 s after SIGTERM");
    assert!(
        refused_after < Duration::from_millis(1400),
        "the in-flight request was still running"
    );

    let (status, body, done_at) = in_flight.await??;
    assert_eq!(status, 200, "the in-flight request completes");
    assert_eq!(body["path"], "/e/in-flight");
    let (status, version) = in_flight_h2.await??;
    assert_eq!(
        (status, version),
        (200, reqwest::Version::HTTP_2),
        "the in-flight h2 stream completes"
    );

    let exit = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the gateway exits after draining");
    assert!(exit.success(), "exit status {exit}");
    assert!(
        done_at.elapsed() < Duration::from_secs(5),
        "exit took too long after the drain"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_bounds_the_drain() -> Result<()> {
    let up = Upstream::slow("very-slow", Duration::from_secs(20)).await;
    let mut gw = start(&echo_config(&up).server("shutdown_grace", "1s")).await?;
    let client = gw.client();
    let url = gw.url("/e/stuck");
    let stuck =
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    assert!(
        eventually(SHORT, || async { (up.hits() == 1).then_some(()) })
            .await
            .is_some()
    );
    let took = terminate(&mut gw, Duration::from_secs(6)).await?;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM with a 1 s grace period"
    );
    // The request that outlived the grace period is cut, not answered, and still logged.
    let outcome = tokio::time::timeout(SHORT, stuck).await?;
    assert!(!matches!(outcome, Ok(Ok(200))), "{outcome:?}");
    let lines = gw.access_log_lines();
    assert!(
        lines
            .iter()
            .any(|l| l["path"] == "/e/stuck" && l["status"] == 499 && l["aborted"] == true),
        "{lines:?}"
    );
    Ok(())
}

/// An HTTP/2 peer that opened a connection and stopped reading never acknowledges the
/// shutdown's GOAWAY: with no stream in flight it is let go, not waited for all the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_peer_that_stopped_reading_does_not_hold_the_shutdown() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let (_up, gw) = echo_gateway("up").await?;
    let mut gw = gw;
    let mut idle = tokio::net::TcpStream::connect(gw.public_addr()).await?;
    // The preface and an empty SETTINGS frame; then nothing is ever read.
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = terminate(&mut gw, Duration::from_secs(10)).await?;
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM; the default grace is 30 s"
    );
    drop(idle);
    Ok(())
}
