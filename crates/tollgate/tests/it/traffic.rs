//! Traffic control through the real binary: plan buckets per consumer, quotas and business
//! limits, route limits shared by everyone, spike arrest, concurrency slots released when the
//! response ends, edge rules before routing, 429 problems with `Retry-After` and the IETF
//! RateLimit headers, and buckets that survive a reload. Limits are chosen so that refill
//! during a test is negligible (rates of a few per second against bursts of requests sent at
//! once), which keeps the counts exact without controlling the gateway's clock.

use crate::common::*;
use anyhow::Result;
use std::time::Duration;
use tollgate_testkit::{Gateway, TempDir, Upstream, assert_problem, metric_value};

const SECRET: &str = "traffic-it-secret-0123456789";

fn hash(value: &str) -> String {
    keyed_hash(SECRET, value)
}

/// Two consumers on a tight plan (2/s, burst 3, 6 per day) and one on a roomy plan, routes
/// with a shared limit, spike arrest, a business quota and a concurrency cap.
fn config(dir: &TempDir, up: &Upstream, extra: &str) -> String {
    let secret = dir.path().join("hash-secret");
    std::fs::write(&secret, SECRET).expect("write secret");
    format!(
        r#"
listeners:
  public: {{ addr: "127.0.0.1:0" }}
  admin: {{ addr: "127.0.0.1:0" }}
server:
  trusted_proxies: [127.0.0.0/8]
identity:
  hash_secret_file: "{secret}"
plans:
  tight: {{ rate: 0.01, burst: 3, quota: {{ limit: 6, period: day }} }}
  roomy: {{ rate: 1000, burst: 1000 }}
  counted: {{ rate: 1000, burst: 1000, quota: {{ limit: 3, period: day }} }}
consumers:
  alice: {{ plan: tight, api_keys: [{{ id: a, hash: "{alice}" }}] }}
  bob:   {{ plan: tight, api_keys: [{{ id: b, hash: "{bob}" }}] }}
  carol: {{ plan: roomy, api_keys: [{{ id: c, hash: "{carol}" }}] }}
  dave:  {{ plan: counted, api_keys: [{{ id: d, hash: "{dave}" }}] }}
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
          - id: shared
            path: "/shared/{{id}}"
            methods: [GET]
            limits: {{ rate: {{ rate: 0.01, burst: 4, per: all }} }}
          - id: business
            path: "/pay/{{id}}"
            methods: [GET]
            limits: {{ quota: {{ limit: 2, period: hour, per: consumer }} }}
          - id: smooth
            path: "/smooth/{{id}}"
            methods: [GET]
            limits: {{ spike_arrest: {{ rate: 0.05, per: consumer }} }}
          - id: slow
            path: "/slow/{{id}}"
            methods: [GET]
            limits: {{ concurrency: {{ max: 1, per: all }} }}
{extra}
"#,
        secret = secret.display(),
        alice = hash("key-alice"),
        bob = hash("key-bob"),
        carol = hash("key-carol"),
        dave = hash("key-dave"),
        url = up.url(),
    )
}

async fn get(gw: &Gateway, path: &str, key: &str) -> Result<reqwest::Response> {
    Ok(gw
        .client()
        .get(gw.url(path))
        .header("x-api-key", key)
        .send()
        .await?)
}

async fn status(gw: &Gateway, path: &str, key: &str) -> Result<u16> {
    Ok(get(gw, path, key).await?.status().as_u16())
}

#[tokio::test]
async fn a_plan_bucket_admits_its_burst_per_consumer_and_says_so() -> Result<()> {
    let up = Upstream::echo("up").await;
    let dir = TempDir::new("traffic")?;
    let gw = Gateway::start(BIN, &config(&dir, &up, "")).await?;

    let first = get(&gw, "/p/1", "key-alice").await?;
    assert_eq!(first.status(), 200);
    let policy = first
        .headers()
        .get("ratelimit-policy")
        .expect("RateLimit-Policy")
        .to_str()?
        .to_string();
    assert!(policy.contains("\"plan-tight\";q=3"), "{policy}");
    assert!(policy.contains("\"quota-tight\";q=6;w=86400"), "{policy}");
    let limit = first
        .headers()
        .get("ratelimit")
        .expect("RateLimit")
        .to_str()?
        .to_string();
    assert!(limit.contains(";r=2"), "{limit}");

    assert_eq!(status(&gw, "/p/1", "key-alice").await?, 200);
    assert_eq!(status(&gw, "/p/1", "key-alice").await?, 200);
    let r = get(&gw, "/p/1", "key-alice").await?;
    let code = r.status();
    let headers = r.headers().clone();
    let body = r.bytes().await?;
    assert_problem(code, &headers, &body, 429);
    let retry: u64 = headers["retry-after"].to_str()?.parse()?;
    assert!(retry >= 1, "Retry-After {retry}");
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(v["limit"], "plan");
    assert_eq!(v["type"], "https://tollgate.dev/problems/rate-limited");
    assert!(headers["ratelimit"].to_str()?.contains(";r=0"));

    // Bob shares the plan, not Alice's bucket; Carol's plan is another bucket altogether.
    for _ in 0..3 {
        assert_eq!(status(&gw, "/p/1", "key-bob").await?, 200);
    }
    for _ in 0..20 {
        assert_eq!(status(&gw, "/p/1", "key-carol").await?, 200);
    }
    // The refused request never reached the upstream.
    assert_eq!(up.hits(), 3 + 3 + 20);
    let m = gw.metrics().await?;
    assert_eq!(
        metric_value(&m, "tollgate_throttled_total", &[("tier", "plan")]),
        Some(1.0)
    );
    Ok(())
}

/// The RateLimit fields travel beside the response's map and the `X-Consumer-*` fields beside
/// the request's: both protocols must still see each exactly once, forged copies never.
#[tokio::test]
async fn limit_and_consumer_fields_appear_once_on_both_protocols() -> Result<()> {
    let up = Upstream::echo("up").await;
    let dir = TempDir::new("traffic")?;
    let cfg = config(&dir, &up, "").replace(
        "identity:\n",
        "identity:\n  forward_tenant_and_plan: true\n",
    );
    let gw = Gateway::start(BIN, &cfg).await?;
    for client in [gw.client(), gw.h2c_client()] {
        let r = client
            .get(gw.url("/p/1"))
            .header("x-api-key", "key-carol")
            .header("x-consumer-id", "mallory")
            .header("x-consumer-plan", "gold")
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        let version = r.version();
        for name in ["ratelimit-policy", "ratelimit", "x-request-id"] {
            let n = r.headers().get_all(name).iter().count();
            assert_eq!(n, 1, "{name} on {version:?}: {:?}", r.headers());
        }
        assert!(
            r.headers()["ratelimit-policy"]
                .to_str()?
                .contains("\"plan-roomy\";q=1000")
        );
        let echo: serde_json::Value = r.json().await?;
        assert_eq!(echoed(&echo, "x-consumer-id"), Some("carol"), "{echo}");
        assert_eq!(echoed(&echo, "x-consumer-plan"), Some("roomy"), "{echo}");
        assert_eq!(echoed(&echo, "x-api-key"), None, "{echo}");
    }
    // A refusal carries them too, beside its own `Retry-After`, on both protocols.
    for client in [gw.client(), gw.h2c_client()] {
        let mut last = None;
        for _ in 0..5 {
            let r = client
                .get(gw.url("/shared/1"))
                .header("x-api-key", "key-carol")
                .send()
                .await?;
            if r.status() == 429 {
                last = Some(r);
                break;
            }
        }
        let r = last.expect("the shared route refuses after its burst");
        for name in ["ratelimit-policy", "ratelimit", "retry-after"] {
            assert_eq!(r.headers().get_all(name).iter().count(), 1, "{name}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_quota_counts_admitted_requests_only_and_a_business_limit_is_per_consumer() -> Result<()>
{
    let up = Upstream::echo("up").await;
    let dir = TempDir::new("traffic")?;
    let gw = Gateway::start(BIN, &config(&dir, &up, "")).await?;

    // Business limit: 2 per consumer per hour on /pay.
    assert_eq!(status(&gw, "/pay/1", "key-carol").await?, 200);
    assert_eq!(status(&gw, "/pay/2", "key-carol").await?, 200);
    let r = get(&gw, "/pay/3", "key-carol").await?;
    assert_eq!(r.status(), 429);
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["type"], "https://tollgate.dev/problems/quota-exceeded");
    assert_eq!(v["limit"], "route-quota");
    // Per consumer: Alice still has hers (and her plan's burst).
    assert_eq!(status(&gw, "/pay/1", "key-alice").await?, 200);

    // A refusal by the business limit used nothing of Carol's plan: more requests pass.
    assert_eq!(status(&gw, "/p/1", "key-carol").await?, 200);

    // Dave's plan allows 3 per day, whatever the route.
    assert_eq!(status(&gw, "/p/1", "key-dave").await?, 200);
    assert_eq!(status(&gw, "/pay/1", "key-dave").await?, 200);
    assert_eq!(status(&gw, "/p/2", "key-dave").await?, 200);
    let r = get(&gw, "/p/3", "key-dave").await?;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=86_400).contains(&retry), "Retry-After {retry}");
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["limit"], "quota");
    let m = gw.metrics().await?;
    assert_eq!(
        metric_value(&m, "tollgate_throttled_total", &[("tier", "route-quota")]),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&m, "tollgate_throttled_total", &[("tier", "quota")]),
        Some(1.0)
    );
    Ok(())
}

#[tokio::test]
async fn a_route_limit_is_shared_by_everyone_and_spike_arrest_spaces_requests() -> Result<()> {
    let up = Upstream::echo("up").await;
    let dir = TempDir::new("traffic")?;
    let gw = Gateway::start(BIN, &config(&dir, &up, "")).await?;
    // 4 in the shared bucket, whoever sends them.
    for key in ["key-carol", "key-carol", "key-carol", "key-carol"] {
        assert_eq!(status(&gw, "/shared/1", key).await?, 200);
    }
    let r = get(&gw, "/shared/1", "key-carol").await?;
    assert_eq!(r.status(), 429);
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["limit"], "route");

    // Spike arrest at 0.05/s: one request, then none for 20 s.
    assert_eq!(status(&gw, "/smooth/1", "key-carol").await?, 200);
    let r = get(&gw, "/smooth/1", "key-carol").await?;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!((19..=20).contains(&retry), "Retry-After {retry}");
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["type"], "https://tollgate.dev/problems/spike-arrested");
    Ok(())
}

#[tokio::test]
async fn a_concurrency_slot_is_held_until_the_response_ends() -> Result<()> {
    let up = Upstream::slow("slow", Duration::from_millis(800)).await;
    let dir = TempDir::new("traffic")?;
    let gw = Gateway::start(BIN, &config(&dir, &up, "")).await?;
    let c = gw.client();
    // Dave's plan allows 3 requests a day.
    let first = {
        let req = c.get(gw.url("/slow/1")).header("x-api-key", "key-dave");
        tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..4 {
        let r = get(&gw, "/slow/2", "key-dave").await?;
        assert_eq!(r.status(), 429);
        let v: serde_json::Value = r.json().await?;
        assert_eq!(
            v["type"],
            "https://tollgate.dev/problems/concurrency-limited"
        );
    }
    assert_eq!(first.await??, 200);
    // Released with the first response: the next ones get the slot, and the refused ones used
    // none of the quota.
    assert_eq!(status(&gw, "/slow/3", "key-dave").await?, 200);
    assert_eq!(status(&gw, "/slow/4", "key-dave").await?, 200);
    let r = get(&gw, "/slow/5", "key-dave").await?;
    assert_eq!(r.status(), 429);
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["type"], "https://tollgate.dev/problems/quota-exceeded");
    Ok(())
}

#[tokio::test]
async fn edge_rules_refuse_before_routing_and_block_a_noisy_address() -> Result<()> {
    let up = Upstream::echo("up").await;
    let dir = TempDir::new("traffic")?;
    let extra = "edge:\n  deny: [203.0.113.0/24]\n  ip_rules:\n    - { max_requests: 5, window: 10s, block_for: 60s }\n";
    let gw = Gateway::start(BIN, &config(&dir, &up, extra)).await?;
    let c = gw.client();
    // Denied network (behind our trusted proxy): 403 on a real path and on an unknown one.
    for path in ["/p/1", "/nowhere"] {
        let r = c
            .get(gw.url(path))
            .header("x-api-key", "key-carol")
            .header("x-forwarded-for", "203.0.113.9")
            .send()
            .await?;
        let code = r.status();
        let headers = r.headers().clone();
        let body = r.bytes().await?;
        assert_problem(code, &headers, &body, 403);
    }
    // The per-IP rule: 5 in 10 s pass, the 6th blocks this address (and only it) on every route.
    for _ in 0..5 {
        let r = c
            .get(gw.url("/p/1"))
            .header("x-api-key", "key-carol")
            .header("x-forwarded-for", "198.51.100.7")
            .send()
            .await?;
        assert_eq!(r.status(), 200);
    }
    let r = c
        .get(gw.url("/shared/1"))
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await?;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!((59..=60).contains(&retry), "Retry-After {retry}");
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["limit"], "ip");
    let r = c
        .get(gw.url("/nowhere"))
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await?;
    assert_eq!(r.status(), 429);
    let r = c
        .get(gw.url("/p/1"))
        .header("x-api-key", "key-carol")
        .header("x-forwarded-for", "198.51.100.8")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

#[tokio::test]
async fn buckets_survive_a_reload_and_new_limits_apply_at_once() -> Result<()> {
    let up = Upstream::echo("up").await;
    let dir = TempDir::new("traffic")?;
    let gw = Gateway::start(BIN, &config(&dir, &up, "")).await?;
    for _ in 0..3 {
        assert_eq!(status(&gw, "/p/1", "key-alice").await?, 200);
    }
    assert_eq!(status(&gw, "/p/1", "key-alice").await?, 429);
    // The route's bucket, shared by everyone: burst 4.
    for _ in 0..4 {
        assert_eq!(status(&gw, "/shared/1", "key-carol").await?, 200);
    }
    assert_eq!(status(&gw, "/shared/1", "key-carol").await?, 429);
    // Same config again: a reload must not hand out a fresh burst.
    gw.rewrite_config(&config(&dir, &up, ""))?;
    assert_eq!(gw.admin_reload().await?.status(), 200);
    assert_eq!(status(&gw, "/p/1", "key-alice").await?, 429);
    assert_eq!(status(&gw, "/shared/1", "key-carol").await?, 429);
    // Nor must a new consumer listed before Alice, which moves her place in the config.
    let text = config(&dir, &up, "").replace(
        "  alice:",
        &format!(
            "  aaron: {{ plan: tight, api_keys: [{{ id: aa, hash: \"{}\" }}] }}\n  alice:",
            hash("key-aaron")
        ),
    );
    gw.rewrite_config(&text)?;
    assert_eq!(gw.admin_reload().await?.status(), 200);
    assert_eq!(status(&gw, "/p/1", "key-alice").await?, 429);
    assert_eq!(status(&gw, "/shared/1", "key-carol").await?, 429);
    assert_eq!(status(&gw, "/p/1", "key-aaron").await?, 200);
    // A temporary override for Alice applies on the next request.
    let text = config(&dir, &up, "").replace(
        "alice: { plan: tight,",
        "alice: { plan: tight, override: { rate: 1000, burst: 1000, expires_at: \"2099-01-01T00:00:00Z\" },",
    );
    gw.rewrite_config(&text)?;
    assert_eq!(gw.admin_reload().await?.status(), 200);
    assert_eq!(status(&gw, "/p/1", "key-alice").await?, 200);
    Ok(())
}

/// HMAC-signed tokens are accepted only from an issuer configured with a shared secret.
#[tokio::test]
async fn an_hs256_issuer_with_a_shared_secret_is_accepted_and_nothing_else_hs_is() -> Result<()> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let up = Upstream::echo("up").await;
    let dir = TempDir::new("traffic")?;
    let jwt_secret = dir.path().join("jwt-secret");
    std::fs::write(&jwt_secret, "an-hs256-shared-secret-of-32-bytes!!")?;
    let extra = "      h:\n        upstream: up\n        auth: { any: [jwt] }\n        routes:\n          - { id: hs, path: \"/hs/{id}\", methods: [GET] }\n";
    let yaml = config(&dir, &up, extra).replace(
        "identity:\n",
        &format!(
            "identity:\n  jwt:\n    - {{ issuer: https://hs.test, audiences: [bank-api], hmac_secret_file: \"{}\", algorithms: [HS256] }}\n",
            jwt_secret.display()
        ),
    );
    let gw = Gateway::start(BIN, &yaml).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({"iss": "https://hs.test", "aud": "bank-api", "sub": "carol", "exp": now + 300, "iat": now});
    let good = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"an-hs256-shared-secret-of-32-bytes!!"),
    )?;
    let r = gw
        .client()
        .get(gw.url("/hs/1"))
        .bearer_auth(&good)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["headers"]["x-consumer-id"], "carol");
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"some-other-secret-of-32-bytes!!!!!"),
    )?;
    let r = gw
        .client()
        .get(gw.url("/hs/1"))
        .bearer_auth(&forged)
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    Ok(())
}
