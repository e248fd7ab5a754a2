//! Hot functions of the request path: route lookup among 10,000 routes, config compile, and
//! per-request header work. Run: `cargo bench -p tollgate-proxy --bench routing`.

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use tollgate_config::{EnvOverrides, LoadedConfig};
use tollgate_proxy::compile::{Snapshot, compile};
use tollgate_proxy::metrics::Metrics;
use tollgate_proxy::router::Lookup;

/// 100 tenants × 10 APIs × 10 routes = 10,000 routes, with parameters, like a large platform.
fn config_text(routes: usize) -> String {
    let mut s = String::from(
        "listeners:\n  public:\n    addr: 127.0.0.1:0\nupstreams:\n  up:\n    targets: [{url: \"http://127.0.0.1:9\"}]\ntenants:\n",
    );
    let per_api = 10;
    let apis_per_tenant = 10;
    let tenants = routes.div_ceil(per_api * apis_per_tenant);
    for t in 0..tenants {
        s.push_str(&format!("  t{t}:\n    apis:\n"));
        for a in 0..apis_per_tenant {
            s.push_str(&format!(
                "      a{a}:\n        upstream: up\n        routes:\n"
            ));
            for r in 0..per_api {
                s.push_str(&format!(
                    "          - path: /t{t}/a{a}/v1/res{r}/{{id}}/sub\n            methods: [GET, POST]\n"
                ));
            }
        }
    }
    s
}

fn loaded(routes: usize) -> LoadedConfig {
    let text = config_text(routes);
    let config = tollgate_config::parse_str(&text, &EnvOverrides::default(), Path::new("."))
        .expect("bench config is valid");
    LoadedConfig {
        config,
        source_path: "bench.yaml".into(),
        source_text: text,
        base_dir: ".".into(),
    }
}

fn snapshot(routes: usize) -> Snapshot {
    let env = tollgate_policy::Env::new(Arc::new(tollgate_core::SystemClock));
    compile(Arc::new(loaded(routes)), None, &Metrics::new(), &env, 1).expect("compiles")
}

fn routing(c: &mut Criterion) {
    let snap = snapshot(10_000);
    assert_eq!(snap.public.len(), 30_000); // GET, POST and the implied HEAD
    let mut g = c.benchmark_group("route_lookup_10k");
    g.bench_function("hit", |b| {
        b.iter(|| {
            matches!(
                snap.public.lookup(
                    black_box(&Method::GET),
                    black_box("/t57/a3/v1/res7/12345/sub")
                ),
                Lookup::Found(_)
            )
        })
    });
    g.bench_function("miss", |b| {
        b.iter(|| {
            matches!(
                snap.public.lookup(
                    black_box(&Method::GET),
                    black_box("/t57/a3/v1/nothing/here")
                ),
                Lookup::NotFound
            )
        })
    });
    g.bench_function("wrong_method", |b| {
        b.iter(|| {
            matches!(
                snap.public.lookup(
                    black_box(&Method::DELETE),
                    black_box("/t57/a3/v1/res7/1/sub")
                ),
                Lookup::MethodNotAllowed(_)
            )
        })
    });
    g.finish();
}

fn config_compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("config");
    g.sample_size(10);
    let text = config_text(10_000);
    g.bench_function("parse_validate_10k_routes", |b| {
        b.iter(|| {
            tollgate_config::parse_str(black_box(&text), &EnvOverrides::default(), Path::new("."))
                .is_ok()
        })
    });
    let l = Arc::new(loaded(10_000));
    let env = tollgate_policy::Env::new(Arc::new(tollgate_core::SystemClock));
    let metrics = Metrics::new();
    g.bench_function("compile_10k_routes", |b| {
        b.iter(|| compile(l.clone(), None, &metrics, &env, 1).is_ok())
    });
    g.finish();
}

fn headers(c: &mut Criterion) {
    let mut base = HeaderMap::new();
    base.insert("host", HeaderValue::from_static("api.bank.test"));
    base.insert("user-agent", HeaderValue::from_static("wrk"));
    base.insert("accept", HeaderValue::from_static("*/*"));
    base.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
    let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().expect("net")];
    let peer: std::net::IpAddr = [127, 0, 0, 1].into();
    let peer_value = tollgate_proxy::forward::peer_value(peer);
    let request_id = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    let tp = tollgate_core::trace::TraceParent {
        trace_id: 1,
        parent_id: 2,
        flags: 0,
    };
    // What the request path does: the client IP, hop-by-hop removal, and the forwarding fields
    // encoded as the upstream client writes them.
    c.bench_function("forward_headers", |b| {
        b.iter_batched_ref(
            || (base.clone(), Vec::with_capacity(256)),
            |(h, wire)| {
                let ip = tollgate_proxy::forward::client_ip(peer, h, &trusted);
                tollgate_proxy::forward::strip_hop_by_hop(h);
                let f = tollgate_proxy::forward::Forwarded::new(
                    h,
                    &peer_value,
                    true,
                    "http",
                    h.get("host").cloned(),
                    request_id.clone(),
                    tp,
                );
                f.encode(wire);
                ip
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let ids = tollgate_core::trace::RandomIds;
    let parent =
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    c.bench_function("request_id_and_traceparent", |b| {
        b.iter(|| {
            let id = tollgate_core::trace::new_request_id(&ids);
            let tp =
                tollgate_core::trace::TraceParent::child_or_new(Some(black_box(&parent)), &ids)
                    .0
                    .encode();
            (id, tp)
        })
    });
}

fn limiters(c: &mut Criterion) {
    use tollgate_policy::limits::{
        KeyedLimiter, KeyedQuota, Limit, Period, PinnedBucket, PinnedQuota, QuotaLimit, Tier,
        Verdict, check_all, check_pinned,
    };
    use tollgate_policy::traffic::{Key, Subject};
    let rates: KeyedLimiter<Key> = KeyedLimiter::new(1_000_000);
    let quotas: KeyedQuota<Key> = KeyedQuota::new(1_000_000);
    let plan = Limit::new(1_000_000.0, 1_000_000).expect("limit");
    let quota = QuotaLimit::new(u64::MAX / 2, Period::Month);
    let scope: std::sync::Arc<str> = std::sync::Arc::from("plan");
    let keys: Vec<Key> = (0..10_000)
        .map(|i| Key {
            scope: scope.clone(),
            subject: Subject::Consumer(std::sync::Arc::from(format!("consumer-{i}"))),
        })
        .collect();
    let now = std::time::SystemTime::now();
    let mut i = 0usize;
    c.bench_function("limiter_check_one_tier", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            rates.check(black_box(&keys[i]), &plan, now).is_admit()
        })
    });
    let gw_key = Key {
        scope: std::sync::Arc::from("gateway"),
        subject: Subject::Everyone,
    };
    c.bench_function("limiter_check_all_gateway_plan_quota", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let t1 = rates.tier(&gw_key, &plan);
            let t2 = rates.tier(&keys[i], &plan);
            let t3 = quotas.tier(&keys[i], &quota);
            let tiers: [&dyn Tier; 3] = [&t1, &t2, &t3];
            check_all(&tiers, now)
                .map(|v| v.is_admit())
                .unwrap_or(false)
        })
    });
    // The same three tiers as a compiled route holds them: the gateway's bucket and, per
    // configured consumer, the plan bucket and quota, pinned (no key hashed or looked up).
    let pinned: Vec<(PinnedBucket<Key>, PinnedQuota<Key>)> = keys
        .iter()
        .map(|k| (PinnedBucket::new(k.clone()), PinnedQuota::new(k.clone())))
        .collect();
    let gw = PinnedBucket::new(gw_key.clone());
    let mut verdict = Verdict::EMPTY;
    c.bench_function("limiter_check_pinned_gateway_plan_quota", |b| {
        b.iter(|| {
            i = (i + 1) % pinned.len();
            let (bucket, window) = &pinned[i];
            check_pinned(
                &[(&gw, &plan), (black_box(bucket), &plan)],
                &[(window, &quota)],
                now,
                &mut verdict,
            )
            .map(|()| verdict.is_admit())
            .unwrap_or(false)
        })
    });
}

criterion_group!(benches, routing, config_compile, headers, limiters);
criterion_main!(benches);
