//! Config reload by SIGHUP, admin API and file change; refusal of bad files; no failed request
//! while reloading under load.

use crate::common::*;
use anyhow::Result;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tollgate_testkit::{
    ConfigBuilder, Gateway, Signal, Upstream, eventually, expect_problem, metric_value,
};

fn base(up: &Upstream) -> ConfigBuilder {
    ConfigBuilder::new()
        .upstream("up", &up.url())
        .get("first", "/first", "up")
}

fn extended(up: &Upstream) -> ConfigBuilder {
    base(up).get("second", "/second", "up")
}

async fn status(gw: &Gateway, path: &str) -> Result<u16> {
    let r = gw.client().get(gw.url(path)).send().await?;
    let s = r.status().as_u16();
    r.bytes().await?;
    Ok(s)
}

async fn wait_status(gw: &Gateway, path: &str, want: u16) -> bool {
    eventually(SHORT, || async {
        (status(gw, path).await.ok()? == want).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test]
async fn sighup_reloads_the_config() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(&base(&up)).await?;
    assert_eq!(status(&gw, "/second").await?, 404);
    gw.rewrite_config(&extended(&up).render())?;
    // --no-watch: nothing happens until the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(&gw, "/second").await?, 404);
    gw.send_signal(Signal::Hup)?;
    assert!(
        wait_status(&gw, "/second", 200).await,
        "the new route never served after SIGHUP"
    );
    assert_eq!(status(&gw, "/first").await?, 200);
    assert_eq!(
        metric_value(
            &gw.metrics().await?,
            "tollgate_config_reloads_total",
            &[("result", "success")]
        ),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test]
async fn the_admin_api_reloads_the_config() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(&base(&up)).await?;
    gw.rewrite_config(&extended(&up).render())?;
    let r = gw.admin_reload().await?;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["config_generation"], 2);
    // The reload has been applied when the admin call returns.
    assert_eq!(status(&gw, "/second").await?, 200);
    assert_eq!(status(&gw, "/first").await?, 200);
    let ready: serde_json::Value = gw
        .client()
        .get(format!("{}/health/ready", gw.admin_url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(ready["config_generation"], 2);
    Ok(())
}

#[tokio::test]
async fn a_removed_routes_series_leave_the_metrics() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(&extended(&up)).await?;
    assert_eq!(status(&gw, "/second").await?, 200);
    let has = |text: &str, route: &str| text.contains(&format!("route=\"{route}\""));
    let text = gw.metrics().await?;
    assert!(has(&text, "second") && has(&text, "first"), "{text}");
    // Renamed and removed routes, reload after reload: only the live ones are exported.
    for i in 0..5 {
        let cfg = base(&up).get(&format!("gen-{i}"), "/second", "up");
        gw.rewrite_config(&cfg.render())?;
        assert_eq!(gw.admin_reload().await?.status(), 200);
        assert_eq!(status(&gw, "/second").await?, 200);
    }
    let text = gw.metrics().await?;
    assert!(has(&text, "first") && has(&text, "gen-4"), "{text}");
    for gone in ["second", "gen-0", "gen-3"] {
        assert!(!has(&text, gone), "{gone} is still exported: {text}");
    }
    assert_eq!(
        metric_value(
            &text,
            "tollgate_requests_total",
            &[("route", "first"), ("status_class", "2xx")]
        ),
        Some(0.0),
        "a live route's series stay, requested or not"
    );
    assert_eq!(
        metric_value(
            &text,
            "tollgate_requests_total",
            &[("route", "gen-4"), ("status_class", "2xx")]
        ),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test]
async fn a_changed_config_file_is_reloaded() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = Gateway::builder(BIN, &base(&up).render())
        .watch(true)
        .start()
        .await?;
    assert_eq!(status(&gw, "/second").await?, 404);
    gw.rewrite_config(&extended(&up).render())?;
    assert!(
        wait_status(&gw, "/second", 200).await,
        "the file change was not picked up within 5 s"
    );
    assert_eq!(status(&gw, "/first").await?, 200);

    // And a plain in-place write (not a rename) too.
    let third = extended(&up).get("third", "/third", "up").render();
    std::fs::write(gw.config_path(), third)?;
    assert!(
        wait_status(&gw, "/third", 200).await,
        "an in-place write was not picked up within 5 s"
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_config_is_refused_and_the_running_one_stays() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(&base(&up)).await?;
    let bad = base(&up).get("second", "/second", "missing").render();
    let line = bad
        .lines()
        .position(|l| l.contains("upstream: missing"))
        .map(|i| i + 1)
        .expect("line of the bad reference");
    gw.rewrite_config(&bad)?;

    let r = gw.admin_reload().await?;
    let doc = expect_problem(r, 400).await;
    let text = doc.to_string();
    assert!(text.contains("unknown upstream `missing`"), "{text}");
    assert!(
        text.contains("tenants.test.apis.main.routes[1].upstream"),
        "names the key path: {text}"
    );
    assert!(
        text.contains(&format!("line {line}")),
        "names line {line}: {text}"
    );

    assert_eq!(
        status(&gw, "/first").await?,
        200,
        "the running config stays"
    );
    assert_eq!(status(&gw, "/second").await?, 404);

    // An unknown key and broken YAML are refused the same way.
    gw.rewrite_config(
        &base(&up)
            .render()
            .replace("listeners:", "listeners:\n  bogus_key: 1"),
    )?;
    let doc = expect_problem(gw.admin_reload().await?, 400).await;
    assert!(doc.to_string().contains("bogus_key"), "{doc}");
    gw.rewrite_config("listeners: [unclosed\n")?;
    expect_problem(gw.admin_reload().await?, 400).await;

    // SIGHUP with a bad file changes nothing either.
    gw.send_signal(Signal::Hup)?;
    let reached = eventually(SHORT, || async {
        let t = gw.metrics().await.ok()?;
        (metric_value(
            &t,
            "tollgate_config_reloads_total",
            &[("result", "failure")],
        ) == Some(4.0))
        .then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "tollgate_config_reloads_total{{result=\"failure\"}} should be 4"
    );
    assert_eq!(status(&gw, "/first").await?, 200);
    let text = gw.metrics().await?;
    assert_eq!(
        metric_value(
            &text,
            "tollgate_config_reloads_total",
            &[("result", "success")]
        )
        .unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        metric_value(&text, "tollgate_config_generation", &[]),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_survives_a_reload_that_removes_its_route() -> Result<()> {
    let slow = Upstream::slow("slow", Duration::from_millis(1500)).await;
    let fast = Upstream::echo("fast").await;
    let with_slow = ConfigBuilder::new()
        .upstream("slow", &slow.url())
        .upstream("fast", &fast.url())
        .get("slow", "/slow", "slow")
        .get("fast", "/fast", "fast");
    let gw = Arc::new(start(&with_slow).await?);
    // A kept-alive connection opened before the reload must keep working after it.
    let kept = gw.client();
    assert_eq!(kept.get(gw.url("/fast")).send().await?.status(), 200);

    let (g, c) = (gw.clone(), gw.client());
    let in_flight = tokio::spawn(async move {
        let r = c.get(g.url("/slow")).send().await?;
        let s = r.status().as_u16();
        let body: serde_json::Value = r.json().await?;
        anyhow::Ok((s, body))
    });
    assert!(
        eventually(SHORT, || async { (slow.hits() == 1).then_some(()) })
            .await
            .is_some()
    );
    gw.rewrite_config(
        &ConfigBuilder::new()
            .upstream("fast", &fast.url())
            .get("fast", "/fast", "fast")
            .render(),
    )?;
    assert_eq!(gw.admin_reload().await?.status(), 200);
    assert_eq!(
        status(&gw, "/slow").await?,
        404,
        "the route is gone for new requests"
    );

    let (s, body) = in_flight.await??;
    assert_eq!(
        s, 200,
        "the in-flight request completes on the config it started with"
    );
    assert_eq!(body["service"], "slow");
    assert_eq!(kept.get(gw.url("/fast")).send().await?.status(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_under_load_fails_no_request() -> Result<()> {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let config_a = ConfigBuilder::new()
        .upstream("a", &a.url())
        .upstream("b", &b.url())
        .get("r", "/r/{n}", "a")
        .render();
    let config_b = ConfigBuilder::new()
        .upstream("a", &a.url())
        .upstream("b", &b.url())
        .get("r", "/r/{n}", "b")
        .get("extra", "/extra", "a")
        .render();
    let gw = Arc::new(
        start(
            &ConfigBuilder::new()
                .upstream("a", &a.url())
                .upstream("b", &b.url())
                .get("r", "/r/{n}", "a"),
        )
        .await?,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (gw, stop, ok, failures) = (gw.clone(), stop.clone(), ok.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let c = gw.client();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match c.get(gw.url(&format!("/r/{t}-{n}"))).send().await {
                    Ok(r) if r.status() == 200 => match r.bytes().await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("body: {e}")),
                    },
                    Ok(r) => failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("status {}", r.status())),
                    Err(e) => failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("error: {e}")),
                }
            }
        }));
    }
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        gw.rewrite_config(if i % 2 == 0 { &config_b } else { &config_a })?;
        let r = gw.admin_reload().await?;
        assert_eq!(r.status(), 200, "reload {i}: {}", r.text().await?);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "reload under load: {ok} requests ok, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 200, "only {ok} requests ran");
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "both configs served: a={} b={}",
        a.hits(),
        b.hits()
    );
    let text = gw.metrics().await?;
    assert_eq!(
        metric_value(
            &text,
            "tollgate_config_reloads_total",
            &[("result", "success")]
        ),
        Some(20.0)
    );
    assert_eq!(
        metric_value(&text, "tollgate_config_generation", &[]),
        Some(21.0)
    );
    Ok(())
}

#[tokio::test]
async fn a_reload_keeps_the_warm_pool_of_an_unchanged_upstream() -> Result<()> {
    let up = Upstream::echo("up").await;
    let gw = start(&base(&up)).await?;
    for _ in 0..3 {
        assert_eq!(status(&gw, "/first").await?, 200);
    }
    assert_eq!(
        up.connections(),
        1,
        "sequential requests share one upstream connection"
    );
    gw.rewrite_config(&extended(&up).render())?;
    assert_eq!(gw.admin_reload().await?.status(), 200);
    for path in ["/first", "/second", "/first"] {
        assert_eq!(status(&gw, path).await?, 200);
    }
    assert_eq!(
        up.connections(),
        1,
        "the upstream's settings did not change, so its pool (and connection) carried over"
    );
    Ok(())
}
