//! Limits shared through Redis (`TOLLGATE_REDIS_URL`), through the real binary against a real
//! `redis-server` on a free loopback port: accuracy on one node and across two gateway
//! processes, a Redis that stalls, dies and comes back (each failure mode, the timeout, exact
//! limits after recovery), and isolation between a flooding consumer and a steady one.
//!
//! The script's decisions are pinned exactly against the in-process limiter by the unit tests
//! in `tollgate_policy::limits::redis` (manual clock); these tests use real time, so counts are
//! compared with what the measured send times allow.

use crate::common::*;
use anyhow::{Context as _, Result};
use std::time::{Duration, Instant};
use tollgate_testkit::{Gateway, RedisServer, TempDir, Upstream, expect_problem};

const SECRET: &str = "redis-it-secret-0123456789";
const CONSUMERS: [&str; 8] = ["pacer", "flood", "steady", "c1", "c2", "c3", "c4", "prober"];

fn hash(value: &str) -> String {
    keyed_hash(SECRET, value)
}

fn key(consumer: &str) -> String {
    format!("key-{consumer}")
}

/// Plans: `paced` 100/s burst 100, `flood` 20/s burst 20, `roomy` 1000/s. Routes:
/// `/p/{id}` (plan only), and `/local`, `/allow`, `/deny` with a per-consumer route bucket of
/// burst 6 that never refills during a test, each with its failure mode; `/probe` admits
/// everything and fails open, to watch recovery without spending anyone's budget.
fn config(dir: &TempDir, up: &Upstream, redis: &str) -> String {
    let secret = dir.path().join("hash-secret");
    std::fs::write(&secret, SECRET).expect("write secret");
    let plan = |c: &str| match c {
        "pacer" => "paced",
        "flood" => "flood",
        _ => "roomy",
    };
    let consumers: String = CONSUMERS
        .iter()
        .map(|c| {
            format!(
                "  {c}: {{ plan: {}, api_keys: [{{ id: k, hash: \"{}\" }}] }}\n",
                plan(c),
                hash(&key(c))
            )
        })
        .collect();
    let route = |mode: &str| {
        format!(
            "          - {{ id: {mode}, path: \"/{mode}/{{id}}\", methods: [GET], limits: {{ rate: {{ rate: 0.001, burst: 6, per: consumer }}, failure_mode: {mode} }} }}\n"
        )
    };
    format!(
        r#"
listeners:
  public: {{ addr: "127.0.0.1:0" }}
  admin: {{ addr: "127.0.0.1:0" }}
access_log: {{ enabled: false }}
identity:
  hash_secret_file: "{secret}"
limits:
  redis: {redis}
plans:
  paced: {{ rate: 100, burst: 100 }}
  flood: {{ rate: 20, burst: 20 }}
  roomy: {{ rate: 1000, burst: 1000 }}
consumers:
{consumers}
upstreams:
  up: {{ targets: [{{ url: "{url}" }}] }}
tenants:
  t:
    apis:
      a:
        upstream: up
        auth: {{ any: [api_key] }}
        routes:
          - {{ id: plain, path: "/p/{{id}}", methods: [GET] }}
          - {{ id: probe, path: "/probe/{{id}}", methods: [GET], limits: {{ rate: {{ rate: 100000, burst: 100000 }}, failure_mode: allow }} }}
{local}{allow}{deny}"#,
        secret = secret.display(),
        url = up.url(),
        local = route("local"),
        allow = route("allow"),
        deny = route("deny"),
    )
}

async fn gateway(dir: &TempDir, up: &Upstream, redis: &RedisServer, opts: &str) -> Result<Gateway> {
    Gateway::builder(BIN, &config(dir, up, opts))
        .env("TOLLGATE_REDIS_URL", &redis.url())
        .start()
        .await
}

async fn status(client: &reqwest::Client, gw: &Gateway, path: &str, consumer: &str) -> Result<u16> {
    Ok(client
        .get(gw.url(path))
        .header("x-api-key", key(consumer))
        .send()
        .await?
        .status()
        .as_u16())
}

fn redis_keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    redis
        .command(&["KEYS", pattern])
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Sends GET `/p/1` as `pacer` at twice its plan's rate for 10 s, round robin over `gws`, and
/// checks admitted = burst + rate × (time between the first and the last request) within 1%.
async fn plan_accuracy(gws: &[&Gateway]) -> Result<()> {
    let (rate, burst, secs) = (100.0, 100.0, 10.0);
    let interval = Duration::from_secs_f64(1.0 / (2.0 * rate));
    let total = (2.0 * rate * secs) as usize + 1;
    let clients: Vec<reqwest::Client> = gws.iter().map(|g| g.client()).collect();
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    let mut sent_at = Vec::with_capacity(total);
    for i in 0..total {
        tokio::time::sleep_until(start + interval * i as u32).await;
        sent_at.push(Instant::now());
        let (client, url) = (
            clients[i % gws.len()].clone(),
            gws[i % gws.len()].url("/p/1"),
        );
        tasks.push(tokio::spawn(async move {
            client
                .get(url)
                .header("x-api-key", key("pacer"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let mut admitted = 0usize;
    let mut limited = 0usize;
    for t in tasks {
        match t.await?? {
            200 => admitted += 1,
            429 => limited += 1,
            other => anyhow::bail!("unexpected status {other}"),
        }
    }
    let span = sent_at[total - 1] - sent_at[0];
    let expected = burst + rate * span.as_secs_f64();
    let err = (admitted as f64 - expected).abs() / expected;
    assert!(
        err <= 0.01,
        "{} node(s): admitted {admitted} (limited {limited}) over {span:?}, expected {expected:.1}",
        gws.len()
    );
    Ok(())
}

#[tokio::test]
async fn redis_plan_accuracy_at_twice_the_rate_on_one_node() -> Result<()> {
    let redis = RedisServer::start()?;
    let up = Upstream::echo("up").await;
    let dir = TempDir::new("redis-acc1")?;
    let gw = gateway(&dir, &up, &redis, "{ timeout: 500ms }").await?;
    plan_accuracy(&[&gw]).await?;
    // The bucket lives in Redis, with a TTL.
    let keys = redis_keys(&redis, "tollgate:r|plan-paced|c:pacer");
    assert_eq!(
        keys.len(),
        1,
        "no bucket in Redis: {keys:?}; all keys: {:?}",
        redis_keys(&redis, "*")
    );
    let ttl: i64 = redis.command(&["PTTL", &keys[0]])?.parse()?;
    assert!(ttl > 0 && ttl <= 3_000, "PTTL {ttl}");
    Ok(())
}

#[tokio::test]
async fn redis_plan_accuracy_at_twice_the_rate_across_two_gateway_processes() -> Result<()> {
    let redis = RedisServer::start()?;
    let up = Upstream::echo("up").await;
    let (d1, d2) = (TempDir::new("redis-acc2a")?, TempDir::new("redis-acc2b")?);
    let a = gateway(&d1, &up, &redis, "{ timeout: 500ms, expected_nodes: 2 }").await?;
    let b = gateway(&d2, &up, &redis, "{ timeout: 500ms, expected_nodes: 2 }").await?;
    assert_ne!(a.pid(), b.pid());
    // Each process alone sees only the plan's rate and would admit nearly everything.
    plan_accuracy(&[&a, &b]).await?;
    Ok(())
}

/// Sends `n` requests one after another; returns the statuses and the slowest answer.
async fn burst_of(
    client: &reqwest::Client,
    gw: &Gateway,
    path: &str,
    consumer: &str,
    n: usize,
) -> Result<(Vec<u16>, Duration)> {
    let mut statuses = Vec::with_capacity(n);
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        statuses.push(status(client, gw, path, consumer).await?);
        slowest = slowest.max(t.elapsed());
    }
    Ok((statuses, slowest))
}

fn count(statuses: &[u16], code: u16) -> usize {
    statuses.iter().filter(|&&s| s == code).count()
}

#[tokio::test]
async fn redis_outage_follows_each_failure_mode_and_limits_resume_exactly() -> Result<()> {
    const TIMEOUT: Duration = Duration::from_millis(50);
    // What a request may take beyond the Redis timeout on a busy 2-core box (debug build).
    // A request stuck on Redis would take the client's 30 s instead.
    const SLACK: Duration = Duration::from_millis(400);
    let mut redis = RedisServer::start()?;
    let up = Upstream::echo("up").await;
    let dir = TempDir::new("redis-outage")?;
    let gw = gateway(
        &dir,
        &up,
        &redis,
        "{ timeout: 50ms, expected_nodes: 2, breaker: { failures: 3, cool_down: 300ms } }",
    )
    .await?;
    let client = gw.client();
    // Load throughout: `steady` at ~100 req/s on its roomy plan (default mode `local`): every
    // answer must be a 200 and none may wait longer than the timeout allows, whatever Redis does.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (client, url, stop) = (client.clone(), gw.url("/p/1"), stop.clone());
        tokio::spawn(async move {
            let (mut n, mut slowest, mut bad) = (0usize, Duration::ZERO, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                match client
                    .get(&url)
                    .header("x-api-key", key("steady"))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => bad.push(r.status().to_string()),
                    Err(e) => bad.push(e.to_string()),
                }
                slowest = slowest.max(t.elapsed());
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (n, slowest, bad)
        })
    };

    // Redis up: the route bucket (burst 6) is decided in Redis.
    let (s, _) = burst_of(&client, &gw, "/local/1", "c1", 8).await?;
    assert_eq!((count(&s, 200), count(&s, 429)), (6, 2), "{s:?}");
    assert_eq!(redis_keys(&redis, "tollgate:r|route:local|c:c1").len(), 1);

    // Stalled: connections stay open, nothing is answered. Every request ends within the
    // timeout (plus slack), whatever its mode, concurrently.
    redis.pause()?;
    let mut tasks = Vec::new();
    for (path, who) in [("/allow/1", "c2"), ("/deny/1", "c2"), ("/local/1", "c3")]
        .iter()
        .cycle()
        .take(12)
    {
        let (client, url) = (client.clone(), gw.url(path));
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = client.get(url).header("x-api-key", key(who)).send().await;
            (path, r.map(|r| r.status().as_u16()), t.elapsed())
        }));
    }
    for t in tasks {
        let (path, status, took) = t.await?;
        let status = status?;
        assert!(
            took <= TIMEOUT + SLACK,
            "{path} took {took:?} on a stalled Redis"
        );
        let want = match path.as_str() {
            "/deny/1" => vec![503],
            "/allow/1" => vec![200],
            _ => vec![200, 429],
        };
        assert!(
            want.contains(&status),
            "{path} answered {status} on a stalled Redis"
        );
    }

    // Dead: the breaker is open by now, and each mode keeps its promise.
    redis.kill();
    let (s, slowest) = burst_of(&client, &gw, "/allow/1", "c4", 10).await?;
    assert_eq!(count(&s, 200), 10, "allow: {s:?}");
    assert!(slowest <= TIMEOUT + SLACK, "allow: {slowest:?}");
    let r = client
        .get(gw.url("/allow/1"))
        .header("x-api-key", key("c4"))
        .send()
        .await?;
    assert!(
        r.headers().get("ratelimit").is_none(),
        "allow mode checked nothing"
    );

    let r = client
        .get(gw.url("/deny/1"))
        .header("x-api-key", key("c4"))
        .send()
        .await?;
    let problem = expect_problem(r, 503).await;
    assert_eq!(
        problem["type"],
        "https://tollgate.dev/problems/service-unavailable"
    );
    assert_eq!(problem["limit"], "shared-limits");

    // Local: the in-process bucket with burst 6 / expected_nodes 2 = 3 (c1's budget in the
    // local store was never touched: Redis decided while it was up).
    let (s, slowest) = burst_of(&client, &gw, "/local/1", "c1", 5).await?;
    assert_eq!((count(&s, 200), count(&s, 429)), (3, 2), "local: {s:?}");
    assert!(slowest <= TIMEOUT + SLACK, "local: {slowest:?}");
    // The headers state the divided limits the answer was decided by: the route's burst of 3
    // (r=2 left after this first request of c4's there) and the roomy plan's 500, not the
    // shared 6 and 1000.
    let r = client
        .get(gw.url("/local/1"))
        .header("x-api-key", key("c4"))
        .send()
        .await?;
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (policy, limit) = (header("ratelimit-policy"), header("ratelimit"));
    assert!(policy.contains("\"route:local\";q=3;"), "{policy}");
    assert!(policy.contains(";q=500;"), "{policy}");
    assert!(
        !policy.contains(";q=6;") && !policy.contains(";q=1000;"),
        "{policy}"
    );
    assert!(limit.starts_with("\"route:local\";r=2;"), "{limit}");

    // Back, empty (no persistence). After the cool-down one probe goes through and closes the
    // breaker; the probe route fails open, so watching it spends no one's budget.
    redis.restart()?;
    let back = tollgate_testkit::eventually(Duration::from_secs(10), || async {
        let _ = status(&client, &gw, "/probe/1", "prober").await;
        (!redis_keys(&redis, "tollgate:r|route:probe|*").is_empty()).then_some(())
    })
    .await;
    back.context("the gateway never used the restarted Redis")?;

    // Exactly the Redis limits again: a fresh bucket of 6 in Redis for c1 (the restart lost
    // the old one), and the deny route admits instead of refusing.
    let (s, _) = burst_of(&client, &gw, "/local/1", "c1", 8).await?;
    assert_eq!(
        (count(&s, 200), count(&s, 429)),
        (6, 2),
        "local after recovery: {s:?}"
    );
    let (s, _) = burst_of(&client, &gw, "/deny/1", "c4", 8).await?;
    assert_eq!(
        (count(&s, 200), count(&s, 429)),
        (6, 2),
        "deny after recovery: {s:?}"
    );
    assert_eq!(redis_keys(&redis, "tollgate:r|route:deny|c:c4").len(), 1);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (n, slowest, bad) = load.await?;
    assert!(bad.is_empty(), "the steady load saw {bad:?}");
    assert!(n >= 10, "the steady load sent only {n} requests");
    assert!(
        slowest <= TIMEOUT + SLACK,
        "the steady load waited {slowest:?}"
    );
    assert!(
        gw.stderr_text().contains("circuit breaker opened"),
        "the outage was not logged"
    );
    Ok(())
}

fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort();
    let i = (samples.len() * 99).div_ceil(100).saturating_sub(1);
    samples.get(i).copied().unwrap_or_default()
}

/// `steady` at 100 req/s, one request at a time, for `for_`: its latencies; any non-200 fails.
async fn steady_load(gw: &Gateway, for_: Duration) -> Result<Vec<Duration>> {
    let client = gw.client();
    let url = gw.url("/p/1");
    let interval = Duration::from_millis(10);
    let start = tokio::time::Instant::now();
    let mut out = Vec::new();
    let mut i = 0u32;
    while start.elapsed() < for_ {
        tokio::time::sleep_until(start + interval * i).await;
        i += 1;
        let t = Instant::now();
        let r = client
            .get(&url)
            .header("x-api-key", key("steady"))
            .send()
            .await?;
        let code = r.status().as_u16();
        r.bytes().await?;
        out.push(t.elapsed());
        anyhow::ensure!(code == 200, "steady consumer got {code}");
    }
    Ok(out)
}

#[tokio::test]
async fn redis_a_flooding_consumer_does_not_slow_a_steady_one() -> Result<()> {
    let redis = RedisServer::start()?;
    let up = Upstream::echo("up").await;
    let dir = TempDir::new("redis-isolation")?;
    let gw = gateway(&dir, &up, &redis, "{ timeout: 500ms }").await?;
    // Warm up connections on both sides.
    steady_load(&gw, Duration::from_millis(500)).await?;

    // Unloaded and flooded phases interleave, so background load on the machine (other tests,
    // compilers) falls on both alike.
    let (mut quiet, mut flooded) = (Vec::new(), Vec::new());
    let (mut flood_ok, mut flood_limited) = (0usize, 0usize);
    // Short phases, many times: a burst of background work lands on both sides alike.
    let phase = Duration::from_millis(1500);
    for _ in 0..6 {
        quiet.extend(steady_load(&gw, phase).await?);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The flood: 4 connections sending back to back, about 10× the steady rate.
        let flooders: Vec<_> = (0..4)
            .map(|_| {
                let (client, url, stop) = (gw.client(), gw.url("/p/2"), stop.clone());
                tokio::spawn(async move {
                    let (mut ok, mut limited) = (0usize, 0usize);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match client
                            .get(&url)
                            .header("x-api-key", key("flood"))
                            .send()
                            .await
                        {
                            Ok(r) if r.status() == 200 => ok += 1,
                            Ok(r) if r.status() == 429 => limited += 1,
                            _ => {}
                        }
                        tokio::time::sleep(Duration::from_millis(4)).await;
                    }
                    (ok, limited)
                })
            })
            .collect();
        flooded.extend(steady_load(&gw, phase).await?);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for f in flooders {
            let (ok, limited) = f.await?;
            flood_ok += ok;
            flood_limited += limited;
        }
    }
    assert!(
        flood_limited > 5 * flood_ok.max(1) / 2,
        "the flood was hardly limited: {flood_ok} admitted, {flood_limited} refused"
    );
    let (n_quiet, n_flooded) = (quiet.len(), flooded.len());
    let (q, f) = (p99(&mut quiet), p99(&mut flooded));
    // Within 10%, plus an absolute allowance for a shared 2-core machine (debug build).
    let allowed = q.mul_f64(1.10) + Duration::from_millis(8);
    eprintln!(
        "steady p99: {q:?} alone ({n_quiet} samples), {f:?} under flood ({n_flooded}); \
         flood {flood_ok} admitted, {flood_limited} refused"
    );
    assert!(
        f <= allowed,
        "steady p99 {f:?} under flood vs {q:?} alone (allowed {allowed:?}; {n_flooded}/{n_quiet} samples)"
    );
    Ok(())
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Result<std::process::Output> {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args).env_remove("TOLLGATE_REDIS_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.output()?)
}

#[tokio::test]
async fn redis_settings_out_of_range_are_refused_with_their_key_paths() -> Result<()> {
    let up = Upstream::echo("up").await;
    let dir = TempDir::new("redis-validate")?;
    let path = dir.path().join("gateway.yaml");
    let bad = "{ timeout: 0ms, expected_nodes: 0, breaker: { failures: 0, cool_down: 1s }, key_prefix: \"a b\" }";
    std::fs::write(&path, config(&dir, &up, bad))?;
    let out = run(&["validate", "--config", &path.display().to_string()], &[])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    for k in [
        "limits.redis.timeout",
        "limits.redis.expected_nodes",
        "limits.redis.breaker.failures",
        "limits.redis.key_prefix",
    ] {
        assert!(err.contains(k), "{k} not named: {err}");
    }
    // An unknown failure mode is a parse error naming the key.
    std::fs::write(&path, config(&dir, &up, "{ failure_mode: sometimes }"))?;
    let out = run(&["validate", "--config", &path.display().to_string()], &[])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("failure_mode"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unusable_redis_url_stops_the_start_without_echoing_the_password() -> Result<()> {
    let up = Upstream::echo("up").await;
    let dir = TempDir::new("redis-url")?;
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, config(&dir, &up, "{}"))?;
    let out = run(
        &[
            "serve",
            "--no-watch",
            "--config",
            &path.display().to_string(),
        ],
        &[("TOLLGATE_REDIS_URL", "http://:hunter2@127.0.0.1:6379/")],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {err}");
    assert!(err.contains("TOLLGATE_REDIS_URL"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the password reached the log: {err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_redis_password_is_hidden_in_the_log() -> Result<()> {
    // Redis need not be up: the gateway connects on first use and logs the URL at start.
    let up = Upstream::echo("up").await;
    let dir = TempDir::new("redis-redact")?;
    let gw = Gateway::builder(BIN, &config(&dir, &up, "{}"))
        .env("TOLLGATE_REDIS_URL", "redis://:hunter2@127.0.0.1:9/0")
        .start()
        .await?;
    let log = gw.stderr_text();
    assert!(log.contains("redis://:***@127.0.0.1:9/0"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    Ok(())
}

/// The per-address rule counts across nodes: "more than 10 requests in 10 s" trips on the
/// 11th request whichever node each went to, and the block holds on every node.
#[tokio::test]
async fn redis_ip_rules_count_and_block_across_two_gateway_processes() -> Result<()> {
    let redis = RedisServer::start()?;
    let up = Upstream::echo("up").await;
    let yaml = format!(
        r#"
listeners:
  public: {{ addr: "127.0.0.1:0" }}
  admin: {{ addr: "127.0.0.1:0" }}
server: {{ trusted_proxies: [127.0.0.0/8] }}
access_log: {{ enabled: false }}
edge:
  ip_rules:
    - {{ max_requests: 10, window: 10s, block_for: 60s }}
upstreams:
  up: {{ targets: [{{ url: "{url}" }}] }}
tenants:
  t:
    apis:
      a:
        upstream: up
        routes:
          - {{ id: r, path: "/r/{{id}}", methods: [GET] }}
"#,
        url = up.url()
    );
    let start = || {
        Gateway::builder(BIN, &yaml)
            .env("TOLLGATE_REDIS_URL", &redis.url())
            .start()
    };
    let (a, b) = (start().await?, start().await?);
    let client = a.client();
    let get = |gw: &Gateway, ip: &str| {
        client
            .get(gw.url("/r/1"))
            .header("x-forwarded-for", ip)
            .send()
    };
    for i in 0..10 {
        let gw = if i % 2 == 0 { &a } else { &b };
        assert_eq!(get(gw, "198.51.100.7").await?.status(), 200, "request {i}");
    }
    let r = get(&a, "198.51.100.7").await?;
    let doc = expect_problem(r, 429).await;
    assert_eq!(doc["limit"], "ip", "{doc}");
    let r = get(&b, "198.51.100.7").await?;
    let retry: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!(
        (55..=60).contains(&retry),
        "blocked on the other node too: {retry}"
    );
    expect_problem(r, 429).await;
    assert_eq!(
        get(&b, "198.51.100.8").await?.status(),
        200,
        "another address"
    );
    assert!(
        !redis_keys(&redis, "tollgate:ipb|*").is_empty(),
        "the block lives in Redis"
    );
    Ok(())
}
