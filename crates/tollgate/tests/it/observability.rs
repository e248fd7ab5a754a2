//! Observability: the JSON access log, Prometheus metrics, health and admin authentication.

use crate::common::*;
use anyhow::Result;
use std::time::Duration;
use tollgate_testkit::{
    ADMIN_TOKEN, API, RouteSpec, TENANT, Upstream, eventually, expect_problem, metric_value,
};

#[tokio::test]
async fn every_request_gets_one_json_access_log_line() -> Result<()> {
    let (up, gw) = echo_gateway("up").await?;
    let c = gw.client();
    let r = c
        .get(gw.url("/e/7?x=1"))
        .header("x-request-id", "obs-log-1")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let body = r.bytes().await?;

    let line = gw
        .wait_access_log(SHORT, |l| l["request_id"] == "obs-log-1")
        .await?;
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/e/7");
    assert_eq!(line["route"], "echo");
    assert_eq!(line["tenant"], TENANT);
    assert_eq!(line["api"], API);
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], up.addr().to_string());
    assert_eq!(line["bytes_out"], body.len() as u64);
    // A request without a body declares none.
    assert_eq!(line["bytes_in"], 0);
    let duration = line["duration_ms"]
        .as_f64()
        .expect("duration_ms is a number");
    let upstream_ms = line["upstream_ms"]
        .as_f64()
        .expect("upstream_ms is a number");
    assert!(duration >= upstream_ms && upstream_ms >= 0.0, "{line}");

    // Errors are logged too, without a route or upstream.
    let r = c
        .get(gw.url("/nowhere"))
        .header("x-request-id", "obs-log-404")
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let line = gw
        .wait_access_log(SHORT, |l| l["request_id"] == "obs-log-404")
        .await?;
    assert_eq!(line["status"], 404);
    assert!(
        line["route"].is_null() && line["upstream"].is_null(),
        "{line}"
    );
    assert!(line["duration_ms"].is_number());

    // Exactly one line per request.
    for i in 0..5 {
        c.get(gw.url("/e/1"))
            .header("x-request-id", format!("obs-n-{i}"))
            .send()
            .await?
            .bytes()
            .await?;
    }
    gw.wait_access_log(SHORT, |l| l["request_id"] == "obs-n-4")
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = gw.access_log_lines();
    for i in 0..5 {
        let id = format!("obs-n-{i}");
        let n = lines
            .iter()
            .filter(|l| l["request_id"] == id.as_str())
            .count();
        assert_eq!(n, 1, "{id} logged {n} times");
    }
    assert_eq!(lines.len(), 7, "one line per request: {lines:#?}");
    Ok(())
}

#[tokio::test]
async fn bytes_in_is_the_declared_body_length() -> Result<()> {
    let (_up, gw) = echo_gateway("up").await?;
    let c = gw.client();
    // Whatever the answer: here the route's 405.
    let r = c
        .post(gw.url("/e/7"))
        .header("x-request-id", "obs-in-post")
        .body("hello")
        .send()
        .await?;
    assert_eq!(r.status(), 405);
    let line = gw
        .wait_access_log(SHORT, |l| l["request_id"] == "obs-in-post")
        .await?;
    assert_eq!(line["bytes_in"], 5);
    Ok(())
}

#[tokio::test]
async fn upstream_failures_are_logged_with_their_cause_class() -> Result<()> {
    let dead = tollgate_testkit::dead_addr();
    let gw = start(
        &tollgate_testkit::ConfigBuilder::new()
            .upstream("dead", &format!("http://{dead}"))
            .get("dead", "/dead", "dead"),
    )
    .await?;
    let r = gw
        .client()
        .get(gw.url("/dead"))
        .header("x-request-id", "obs-502")
        .send()
        .await?;
    expect_problem(r, 502).await;
    let line = gw
        .wait_access_log(SHORT, |l| l["request_id"] == "obs-502")
        .await?;
    assert_eq!(line["status"], 502);
    assert_eq!(line["route"], "dead");
    assert_eq!(line["upstream"], dead.to_string());
    assert_eq!(line["fault"], "upstream");
    assert!(line["error"].is_string(), "{line}");
    let text = gw.metrics().await?;
    assert_eq!(
        metric_value(
            &text,
            "tollgate_requests_total",
            &[("route", "dead"), ("status_class", "5xx")]
        ),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_class() -> Result<()> {
    let (_up, gw) = echo_gateway("up").await?;
    let c = gw.client();
    let ok_labels = [("route", "echo"), ("status_class", "2xx")];
    let before =
        metric_value(&gw.metrics().await?, "tollgate_requests_total", &ok_labels).unwrap_or(0.0);
    for i in 0..3 {
        c.get(gw.url(&format!("/e/raw-path-{i}")))
            .send()
            .await?
            .bytes()
            .await?;
    }
    c.get(gw.url("/nowhere/raw-path-x"))
        .send()
        .await?
        .bytes()
        .await?;

    let text = eventually(SHORT, || async {
        let t = gw.metrics().await.ok()?;
        (metric_value(&t, "tollgate_requests_total", &ok_labels) == Some(before + 3.0)).then_some(t)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "tollgate_requests_total{{route=\"echo\",status_class=\"2xx\"}} never reached {}",
            before + 3.0
        )
    });

    assert!(
        text.lines()
            .any(|l| l.starts_with("tollgate_requests_total{")
                && l.contains("tenant=\"test\"")
                && l.contains("api=\"main\"")
                && l.contains("route=\"echo\"")),
        "labels tenant/api/route:\n{text}"
    );
    assert_eq!(
        metric_value(&text, "tollgate_request_duration_seconds_count", &ok_labels),
        Some(before + 3.0),
        "histogram count"
    );
    assert_eq!(
        metric_value(
            &text,
            "tollgate_request_duration_seconds_bucket",
            &[("route", "echo"), ("status_class", "2xx"), ("le", "+Inf")]
        ),
        Some(before + 3.0),
        "histogram +Inf bucket"
    );
    assert!(
        metric_value(&text, "tollgate_request_duration_seconds_sum", &ok_labels)
            .is_some_and(|s| s > 0.0)
    );
    assert!(
        text.contains("# TYPE tollgate_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        metric_value(&text, "tollgate_requests_total", &[("status_class", "4xx")])
            .is_some_and(|v| v >= 1.0),
        "the 404 is counted"
    );
    assert!(
        !text.contains("raw-path"),
        "raw paths must not become labels"
    );
    Ok(())
}

#[tokio::test]
async fn metrics_speak_the_format_the_scraper_asks_for() -> Result<()> {
    let (_up, gw) = echo_gateway("up").await?;
    let c = gw.client();
    c.get(gw.url("/echo")).send().await?.bytes().await?;
    let url = format!("{}/metrics", gw.admin_url());

    // curl and classic scrapers: the Prometheus text format 0.0.4.
    let r = c.get(&url).send().await?;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await?;
    assert!(
        text.contains("# TYPE tollgate_requests_total counter"),
        "{text}"
    );
    assert!(text.contains("tollgate_requests_total{"), "{text}");
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );

    // Prometheus asks for OpenMetrics first, and gets it.
    let r = c
        .get(&url)
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .send()
        .await?;
    assert_eq!(
        r.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = r.text().await?;
    assert!(om.contains("# TYPE tollgate_requests counter"), "{om}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    Ok(())
}

#[tokio::test]
async fn health_endpoints_answer_without_a_token() -> Result<()> {
    let (_up, gw) = echo_gateway("up").await?;
    let c = gw.client();
    for path in ["/health/live", "/health/ready"] {
        let r = c.get(format!("{}{path}", gw.admin_url())).send().await?;
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = c.get(format!("{}/metrics", gw.admin_url())).send().await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

#[tokio::test]
async fn admin_routes_need_the_bearer_token() -> Result<()> {
    let (_up, gw) = echo_gateway("up").await?;
    let c = gw.client();
    let url = format!("{}/admin/reload", gw.admin_url());

    let r = c.post(&url).send().await?;
    assert!(
        r.headers()
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("Bearer"))
    );
    let doc = expect_problem(r, 401).await;
    assert!(!doc.to_string().contains(ADMIN_TOKEN));

    let r = c.post(&url).bearer_auth("wrong-token").send().await?;
    expect_problem(r, 401).await;
    let r = c
        .post(&url)
        .header("authorization", format!("Basic {ADMIN_TOKEN}"))
        .send()
        .await?;
    expect_problem(r, 401).await;
    let r = c
        .get(format!("{}/admin/config", gw.admin_url()))
        .send()
        .await?;
    expect_problem(r, 401).await;

    let r = c.post(&url).bearer_auth(ADMIN_TOKEN).send().await?;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["config_generation"], 2);
    Ok(())
}

/// A client that leaves before its response still leaves a log line (status 499, as nginx
/// logs it, and `aborted`) and is counted, on HTTP/1.1 and HTTP/2 alike.
#[tokio::test]
async fn a_request_whose_client_left_is_still_logged_and_counted() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::slow("slow", Duration::from_secs(2)).await;
    let gw =
        start(&echo_config(&up).route(RouteSpec::new("upload", "/up", "up").methods(&["POST"])))
            .await?;
    let mut s = tokio::net::TcpStream::connect(gw.public_addr()).await?;
    s.write_all(
        format!(
            "GET /e/1 HTTP/1.1\r\nHost: {}\r\nX-Request-ID: gone-h1\r\n\r\n",
            gw.public_addr()
        )
        .as_bytes(),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    let line = gw
        .wait_access_log(SHORT, |l| l["request_id"] == "gone-h1")
        .await?;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["aborted"], true, "{line}");
    assert_eq!(line["route"], "echo", "{line}");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d < 1500.0),
        "recorded when the client left, not when the upstream answered: {line}"
    );

    // Leaving halfway through its body: the same, not a 400 nobody reads.
    let mut s = tokio::net::TcpStream::connect(gw.public_addr()).await?;
    s.write_all(
        format!(
            "POST /up HTTP/1.1\r\nHost: {}\r\nX-Request-ID: gone-body\r\nContent-Length: 100000\r\n\r\n",
            gw.public_addr()
        )
        .as_bytes(),
    )
    .await?;
    s.write_all(&[b'x'; 16 * 1024]).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    let line = gw
        .wait_access_log(SHORT, |l| l["request_id"] == "gone-body")
        .await?;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["error"], "client-closed-request", "{line}");
    assert_eq!(line["aborted"], true, "{line}");

    // HTTP/2: the client resets its stream.
    let c = gw.h2c_client();
    let pending = tokio::spawn({
        let url = gw.url("/e/2");
        async move { c.get(url).header("x-request-id", "gone-h2").send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    pending.abort();
    let line = gw
        .wait_access_log(SHORT, |l| l["request_id"] == "gone-h2")
        .await?;
    assert_eq!(line["status"], 499, "{line}");

    let text = gw.metrics().await?;
    assert!(
        metric_value(
            &text,
            "tollgate_requests_total",
            &[("route", "echo"), ("status_class", "4xx")]
        )
        .is_some_and(|v| v >= 2.0),
        "{text}"
    );
    Ok(())
}
