//! One suite, run against both backends: every test below is instantiated once on a SQLite
//! file and once on a fresh database of a real PostgreSQL server (which must start: these
//! tests fail rather than skip without it).

use anyhow::{Context as _, Result, ensure};
use serde_json::json;
use tollgate_store::{
    ApiDoc, Backend, KeyRow, LATENCY_BOUNDS_MS, LATENCY_BUCKETS, Page, Store, StoreError, Tenant,
    UsageDelta, UsageKey, UsageQuery, latency_bucket,
};
use tollgate_testkit::TempDir;
use tollgate_testkit::postgres::PostgresServer;

/// A store plus whatever keeps its database alive, and the URL to reopen it.
struct Fixture {
    store: Store,
    url: String,
    _dir: Option<TempDir>,
}

async fn sqlite() -> Result<Fixture> {
    let dir = TempDir::new("tollgate-store")?;
    let url = format!("sqlite://{}/store.db", dir.path().display());
    let store = Store::open(&url).await?;
    Ok(Fixture {
        store,
        url,
        _dir: Some(dir),
    })
}

async fn postgres() -> Result<Fixture> {
    let server = PostgresServer::shared()?;
    let url = server.create_database_with_locale_collation()?;
    let store = Store::open(&url).await?;
    Ok(Fixture {
        store,
        url,
        _dir: None,
    })
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    let f = super::sqlite().await?;
                    anyhow::ensure!(f.store.backend() == super::Backend::Sqlite);
                    super::$name(&f).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    let f = super::postgres().await?;
                    anyhow::ensure!(f.store.backend() == super::Backend::Postgres);
                    super::$name(&f).await
                }
            )*
        }
    };
}

both_backends!(
    tenants_crud,
    tenant_tokens,
    apis_crud,
    plans_crud,
    consumers_and_keys,
    pagination_three_pages,
    tenant_delete_cascades,
    consumer_delete_cascades_keys,
    version_bumps_on_every_mutation_only,
    audit_rows,
    load_all_is_everything_active,
    usage_upsert_add_concurrent_exact,
    usage_grouping_minute_hour_day,
    usage_pages_in_byte_order,
    usage_quantiles_from_stored_histograms,
    top_consumers_by_requests,
    persists_across_reopen,
    concurrent_mutations_get_distinct_versions,
);

const ADMIN: &str = "platform-admin";

fn tenant(id: &str) -> Tenant {
    Tenant {
        id: id.into(),
        name: format!("Tenant {id}"),
        created_at: 1_700_000_000_000,
    }
}

fn api(tenant: &str, id: &str, doc: &str) -> ApiDoc {
    ApiDoc {
        tenant: tenant.into(),
        id: id.into(),
        document: doc.into(),
        content_type: "application/yaml".into(),
        updated_at: 1_700_000_000_001,
    }
}

fn key(id: &str, consumer: &str) -> KeyRow {
    KeyRow {
        id: id.into(),
        consumer: consumer.into(),
        hash: format!("hmac-sha256:{id:0>64}"),
        prefix: format!("tg_{id}"),
        created_at: 1_700_000_000_002,
    }
}

fn is_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict))
}

fn is_not_found<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::NotFound))
}

async fn tenants_crud(f: &Fixture) -> Result<()> {
    let s = &f.store;
    assert_eq!(s.get_tenant("acme").await?, None);
    s.create_tenant(&tenant("acme"), ADMIN).await?;
    assert_eq!(s.get_tenant("acme").await?, Some(tenant("acme")));
    assert!(is_conflict(s.create_tenant(&tenant("acme"), ADMIN).await));
    s.create_tenant(&tenant("bank"), ADMIN).await?;
    let all = s.list_tenants(Page::first(10)).await?;
    assert_eq!(all, vec![tenant("acme"), tenant("bank")]);
    assert!(s.delete_tenant("acme", ADMIN).await?);
    assert!(!s.delete_tenant("acme", ADMIN).await?);
    assert_eq!(s.get_tenant("acme").await?, None);
    assert_eq!(s.list_tenants(Page::first(10)).await?, vec![tenant("bank")]);
    Ok(())
}

async fn tenant_tokens(f: &Fixture) -> Result<()> {
    let s = &f.store;
    assert!(is_not_found(
        s.create_tenant_token("acme", "tok1", "h1", ADMIN).await
    ));
    s.create_tenant(&tenant("acme"), ADMIN).await?;
    s.create_tenant_token("acme", "tok1", "h1", ADMIN).await?;
    let row = s.tenant_for_token("h1").await?.context("token row")?;
    assert_eq!((row.id.as_str(), row.tenant.as_str()), ("tok1", "acme"));
    assert!(row.created_at > 1_700_000_000_000);
    assert_eq!(s.tenant_for_token("h2").await?, None);
    // Same id or same hash: conflict.
    assert!(is_conflict(
        s.create_tenant_token("acme", "tok1", "h2", ADMIN).await
    ));
    assert!(is_conflict(
        s.create_tenant_token("acme", "tok2", "h1", ADMIN).await
    ));
    Ok(())
}

async fn apis_crud(f: &Fixture) -> Result<()> {
    let s = &f.store;
    // Stored exactly as submitted: whitespace, comments and key order survive.
    let doc = "openapi: 3.1.0   # keep me\ninfo: {title: t, version: '1'}\npaths: {}\n\n";
    assert!(is_not_found(
        s.put_api(&api("acme", "accounts", doc), ADMIN).await
    ));
    s.create_tenant(&tenant("acme"), ADMIN).await?;
    assert!(s.put_api(&api("acme", "accounts", doc), ADMIN).await?);
    assert_eq!(
        s.get_api("acme", "accounts").await?,
        Some(api("acme", "accounts", doc))
    );
    let mut json_doc = api("acme", "accounts", r#"{"openapi": "3.0.3"}"#);
    json_doc.content_type = "application/json".into();
    assert!(!s.put_api(&json_doc, ADMIN).await?);
    assert_eq!(s.get_api("acme", "accounts").await?, Some(json_doc.clone()));
    assert_eq!(s.get_api("other", "accounts").await?, None);
    assert_eq!(
        s.list_apis(Some("acme"), Page::first(10)).await?,
        vec![json_doc.clone()]
    );
    assert_eq!(s.list_apis(None, Page::first(10)).await?, vec![json_doc]);
    assert!(
        s.list_apis(Some("other"), Page::first(10))
            .await?
            .is_empty()
    );
    assert!(!s.delete_api("other", "accounts", ADMIN).await?);
    assert!(s.delete_api("acme", "accounts", ADMIN).await?);
    assert!(!s.delete_api("acme", "accounts", ADMIN).await?);
    assert_eq!(s.get_api("acme", "accounts").await?, None);
    Ok(())
}

async fn plans_crud(f: &Fixture) -> Result<()> {
    let s = &f.store;
    let gold =
        json!({"id": "gold", "rate": 100, "burst": 20, "quota": {"limit": 1000, "period": "day"}});
    s.create_plan("gold", &gold, ADMIN).await?;
    assert!(is_conflict(s.create_plan("gold", &gold, ADMIN).await));
    let got = s.get_plan("gold").await?.context("gold")?;
    assert_eq!((got.id.as_str(), &got.body), ("gold", &gold));
    let gold2 = json!({"id": "gold", "rate": 200, "burst": 40});
    assert!(!s.put_plan("gold", &gold2, ADMIN).await?);
    assert_eq!(s.get_plan("gold").await?.context("gold")?.body, gold2);
    assert!(s.put_plan("silver", &json!({"rate": 10}), ADMIN).await?);
    let ids: Vec<String> = s
        .list_plans(Page::first(10))
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["gold", "silver"]);
    assert!(s.delete_plan("gold", ADMIN).await?);
    assert!(!s.delete_plan("gold", ADMIN).await?);
    assert_eq!(s.get_plan("gold").await?, None);
    Ok(())
}

async fn consumers_and_keys(f: &Fixture) -> Result<()> {
    let s = &f.store;
    let body = json!({"id": "partner-a", "plan": "gold", "scopes": ["accounts:read"]});
    s.create_consumer("partner-a", &body, ADMIN).await?;
    assert!(is_conflict(
        s.create_consumer("partner-a", &body, ADMIN).await
    ));
    assert_eq!(
        s.get_consumer("partner-a").await?.context("consumer")?.body,
        body
    );
    let patched = json!({"id": "partner-a", "plan": "silver", "scopes": []});
    assert!(s.update_consumer("partner-a", &patched, ADMIN).await?);
    assert!(!s.update_consumer("nobody", &patched, ADMIN).await?);
    assert_eq!(
        s.get_consumer("partner-a").await?.context("consumer")?.body,
        patched
    );
    assert_eq!(s.get_consumer("nobody").await?, None);

    assert!(is_not_found(
        s.create_key(&key("k1", "nobody"), ADMIN).await
    ));
    s.create_key(&key("k1", "partner-a"), ADMIN).await?;
    s.create_key(&key("k2", "partner-a"), ADMIN).await?;
    assert!(is_conflict(
        s.create_key(&key("k1", "partner-a"), ADMIN).await
    ));
    let mut same_hash = key("k3", "partner-a");
    same_hash.hash = key("k1", "").hash;
    assert!(is_conflict(s.create_key(&same_hash, ADMIN).await));
    s.create_consumer("partner-b", &json!({}), ADMIN).await?;
    s.create_key(&key("k4", "partner-b"), ADMIN).await?;

    assert_eq!(
        s.keys(Some("partner-a")).await?,
        vec![key("k1", "partner-a"), key("k2", "partner-a")]
    );
    assert_eq!(s.keys(None).await?.len(), 3);
    // Revoking needs the right consumer, and only works once.
    assert!(!s.revoke_key("partner-b", "k1", ADMIN).await?);
    assert!(s.revoke_key("partner-a", "k1", ADMIN).await?);
    assert!(!s.revoke_key("partner-a", "k1", ADMIN).await?);
    assert_eq!(
        s.keys(Some("partner-a")).await?,
        vec![key("k2", "partner-a")]
    );
    let ids: Vec<String> = s.keys(None).await?.into_iter().map(|k| k.id).collect();
    assert_eq!(ids, ["k2", "k4"]);
    Ok(())
}

async fn pagination_three_pages(f: &Fixture) -> Result<()> {
    let s = &f.store;
    for i in 0..7 {
        s.create_tenant(&tenant(&format!("t{i}")), ADMIN).await?;
        s.create_plan(&format!("p{i}"), &json!({"n": i}), ADMIN)
            .await?;
        s.create_consumer(&format!("c{i}"), &json!({"n": i}), ADMIN)
            .await?;
    }
    // APIs across two tenants, paged in (tenant, id) order.
    for t in ["t1", "t2"] {
        for a in ["a", "b", "c"] {
            s.put_api(&api(t, a, "{}"), ADMIN).await?;
        }
    }

    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .list_tenants(Page {
                after: after.as_deref(),
                limit: 3,
            })
            .await?;
        if page.is_empty() {
            break;
        }
        after = page.last().map(|t| t.id.clone());
        pages.push(page.into_iter().map(|t| t.id).collect::<Vec<_>>());
    }
    assert_eq!(
        pages,
        [vec!["t0", "t1", "t2"], vec!["t3", "t4", "t5"], vec!["t6"]]
    );

    let p1 = s.list_plans(Page::first(3)).await?;
    let p2 = s.list_plans(Page::after(&p1[2].id, 3)).await?;
    let p3 = s.list_plans(Page::after(&p2[2].id, 3)).await?;
    let ids: Vec<&str> = p1
        .iter()
        .chain(&p2)
        .chain(&p3)
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(ids, ["p0", "p1", "p2", "p3", "p4", "p5", "p6"]);
    assert!(s.list_plans(Page::after("p6", 3)).await?.is_empty());

    let c1 = s.list_consumers(Page::first(3)).await?;
    let c2 = s.list_consumers(Page::after(&c1[2].id, 3)).await?;
    let c3 = s.list_consumers(Page::after(&c2[2].id, 3)).await?;
    assert_eq!((c1.len(), c2.len(), c3.len()), (3, 3, 1));
    assert_eq!(c3[0].id, "c6");

    let a1 = s.list_apis(None, Page::first(2)).await?;
    let a2 = s.list_apis(None, Page::after(&a1[1].cursor(), 2)).await?;
    let a3 = s.list_apis(None, Page::after(&a2[1].cursor(), 2)).await?;
    let cursors: Vec<String> = a1
        .iter()
        .chain(&a2)
        .chain(&a3)
        .map(ApiDoc::cursor)
        .collect();
    assert_eq!(cursors, ["t1/a", "t1/b", "t1/c", "t2/a", "t2/b", "t2/c"]);
    assert!(s.list_apis(None, Page::after("t2/c", 2)).await?.is_empty());
    // With a tenant filter, a bare id is a cursor too.
    let t2: Vec<String> = s
        .list_apis(Some("t2"), Page::after("a", 10))
        .await?
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(t2, ["b", "c"]);

    let audit1 = s.audit(Page::first(10)).await?;
    let audit2 = s.audit(Page::after(&audit1[9].id, 10)).await?;
    let audit3 = s.audit(Page::after(&audit2[9].id, 10)).await?;
    // 21 creates + 6 API puts.
    assert_eq!((audit1.len(), audit2.len(), audit3.len()), (10, 10, 7));
    Ok(())
}

async fn tenant_delete_cascades(f: &Fixture) -> Result<()> {
    let s = &f.store;
    for t in ["acme", "bank"] {
        s.create_tenant(&tenant(t), ADMIN).await?;
        s.put_api(&api(t, "accounts", "{}"), ADMIN).await?;
        s.put_api(&api(t, "payments", "{}"), ADMIN).await?;
        s.create_tenant_token(t, &format!("tok-{t}"), &format!("hash-{t}"), ADMIN)
            .await?;
    }
    assert!(s.delete_tenant("acme", ADMIN).await?);
    assert!(s.list_apis(Some("acme"), Page::first(10)).await?.is_empty());
    assert_eq!(s.get_api("acme", "accounts").await?, None);
    assert_eq!(s.tenant_for_token("hash-acme").await?, None);
    // The other tenant is untouched.
    assert_eq!(s.list_apis(None, Page::first(10)).await?.len(), 2);
    assert!(s.tenant_for_token("hash-bank").await?.is_some());
    // Re-creating the tenant starts empty.
    s.create_tenant(&tenant("acme"), ADMIN).await?;
    assert!(s.list_apis(Some("acme"), Page::first(10)).await?.is_empty());
    Ok(())
}

async fn consumer_delete_cascades_keys(f: &Fixture) -> Result<()> {
    let s = &f.store;
    s.create_consumer("a", &json!({}), ADMIN).await?;
    s.create_consumer("b", &json!({}), ADMIN).await?;
    s.create_key(&key("ka1", "a"), ADMIN).await?;
    s.create_key(&key("ka2", "a"), ADMIN).await?;
    s.create_key(&key("kb1", "b"), ADMIN).await?;
    s.revoke_key("a", "ka2", ADMIN).await?;
    assert!(s.delete_consumer("a", ADMIN).await?);
    assert!(!s.delete_consumer("a", ADMIN).await?);
    assert_eq!(s.keys(None).await?, vec![key("kb1", "b")]);
    // The key ids and hashes are free again (revoked ones too).
    s.create_consumer("a", &json!({}), ADMIN).await?;
    s.create_key(&key("ka1", "a"), ADMIN).await?;
    s.create_key(&key("ka2", "a"), ADMIN).await?;
    Ok(())
}

async fn version_bumps_on_every_mutation_only(f: &Fixture) -> Result<()> {
    let s = &f.store;
    let mut expected = s.version().await?;
    assert_eq!(expected, 0);
    macro_rules! bumps {
        ($e:expr) => {{
            let r = $e;
            expected += 1;
            ensure!(
                s.version().await? == expected,
                "{} did not bump",
                stringify!($e)
            );
            r
        }};
    }
    macro_rules! same {
        ($e:expr) => {{
            let r = $e;
            ensure!(s.version().await? == expected, "{} bumped", stringify!($e));
            r
        }};
    }
    bumps!(s.create_tenant(&tenant("acme"), ADMIN).await?);
    same!(assert!(is_conflict(
        s.create_tenant(&tenant("acme"), ADMIN).await
    )));
    bumps!(s.create_tenant_token("acme", "t1", "h1", ADMIN).await?);
    same!(assert!(is_not_found(
        s.create_tenant_token("zz", "t2", "h2", ADMIN).await
    )));
    bumps!(s.put_api(&api("acme", "x", "{}"), ADMIN).await?);
    bumps!(s.put_api(&api("acme", "x", "{ }"), ADMIN).await?);
    same!(assert!(is_not_found(
        s.put_api(&api("zz", "x", "{}"), ADMIN).await
    )));
    bumps!(s.delete_api("acme", "x", ADMIN).await?);
    same!(assert!(!s.delete_api("acme", "x", ADMIN).await?));
    bumps!(s.create_plan("p", &json!({}), ADMIN).await?);
    same!(assert!(is_conflict(
        s.create_plan("p", &json!({}), ADMIN).await
    )));
    bumps!(s.put_plan("p", &json!({"rate": 1}), ADMIN).await?);
    bumps!(s.delete_plan("p", ADMIN).await?);
    same!(assert!(!s.delete_plan("p", ADMIN).await?));
    bumps!(s.create_consumer("c", &json!({}), ADMIN).await?);
    bumps!(s.update_consumer("c", &json!({"plan": "p"}), ADMIN).await?);
    same!(assert!(!s.update_consumer("zz", &json!({}), ADMIN).await?));
    bumps!(s.create_key(&key("k", "c"), ADMIN).await?);
    same!(assert!(is_conflict(
        s.create_key(&key("k", "c"), ADMIN).await
    )));
    bumps!(s.revoke_key("c", "k", ADMIN).await?);
    same!(assert!(!s.revoke_key("c", "k", ADMIN).await?));
    bumps!(s.delete_consumer("c", ADMIN).await?);
    bumps!(s.delete_tenant("acme", ADMIN).await?);
    same!(assert!(!s.delete_tenant("acme", ADMIN).await?));
    same!(
        s.add_usage(&[UsageDelta {
            minute_ms: 60_000,
            consumer: "c".into(),
            api: "x".into(),
            requests: 1,
            ..Default::default()
        }])
        .await?
    );
    assert_eq!(s.load_all().await?.version, expected);
    Ok(())
}

async fn concurrent_mutations_get_distinct_versions(f: &Fixture) -> Result<()> {
    // Two admin nodes writing at once: every mutation gets its own version and audit row,
    // none fails with "database is locked".
    let other = Store::open(&f.url).await?;
    let writer = |store: Store, node: &'static str| {
        tokio::spawn(async move {
            for i in 0..20 {
                store
                    .create_plan(&format!("{node}-{i:02}"), &json!({"i": i}), node)
                    .await?;
            }
            anyhow::Ok(())
        })
    };
    let (a, b) = tokio::join!(writer(f.store.clone(), "a"), writer(other, "b"));
    a??;
    b??;
    assert_eq!(f.store.version().await?, 40);
    let audit = f.store.audit(Page::first(100)).await?;
    let versions: Vec<i64> = audit.iter().map(|r| r.version).collect();
    assert_eq!(versions, (1..=40).collect::<Vec<_>>());
    assert_eq!(f.store.list_plans(Page::first(100)).await?.len(), 40);
    Ok(())
}

async fn audit_rows(f: &Fixture) -> Result<()> {
    let s = &f.store;
    s.create_tenant(&tenant("acme"), "alice").await?;
    s.create_tenant_token("acme", "tok1", "secret-hash", "alice")
        .await?;
    s.put_api(&api("acme", "accounts", "{}"), "tenant:acme")
        .await?;
    s.create_consumer(
        "c",
        &json!({"plan": "gold", "client_secret_hash": "h-abc"}),
        "bob",
    )
    .await?;
    s.create_key(&key("k1", "c"), "bob").await?;
    s.revoke_key("c", "k1", "bob").await?;
    assert!(is_conflict(s.create_consumer("c", &json!({}), "bob").await));
    s.delete_tenant("acme", "alice").await?;

    let rows = s.audit(Page::first(100)).await?;
    let got: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r.actor.as_str(), r.action.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("alice", "tenant.create", "acme"),
            ("alice", "tenant_token.create", "acme"),
            ("tenant:acme", "api.create", "acme/accounts"),
            ("bob", "consumer.create", "c"),
            ("bob", "key.create", "c"),
            ("bob", "key.revoke", "c"),
            ("alice", "tenant.delete", "acme"),
        ]
    );
    // One row per version, in order, with a time and a JSON detail.
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.version, i as i64 + 1);
        assert_eq!(r.id, format!("{:020}", r.version));
        assert!(r.at_ms > 1_700_000_000_000);
    }
    // Hashed credentials are stored, and the audit log says only that there was one.
    assert_eq!(
        rows[3].detail,
        json!({"plan": "gold", "client_secret_hash": "(redacted)"})
    );
    assert_eq!(
        s.get_consumer("c")
            .await?
            .map(|e| e.body["client_secret_hash"].clone()),
        Some(json!("h-abc"))
    );
    assert_eq!(rows[4].detail["key_id"], "k1");
    assert_eq!(rows[6].detail, json!({"apis": 1, "tokens": 1}));
    // Secrets' hashes never reach the audit log.
    for r in &rows {
        let text = r.detail.to_string();
        assert!(
            !text.contains("secret-hash") && !text.contains("hmac-sha256"),
            "{text}"
        );
    }
    Ok(())
}

async fn load_all_is_everything_active(f: &Fixture) -> Result<()> {
    let s = &f.store;
    s.create_tenant(&tenant("acme"), ADMIN).await?;
    s.put_api(&api("acme", "accounts", "doc"), ADMIN).await?;
    s.create_plan("gold", &json!({"rate": 5}), ADMIN).await?;
    s.create_consumer("c", &json!({"plan": "gold"}), ADMIN)
        .await?;
    s.create_key(&key("k1", "c"), ADMIN).await?;
    s.create_key(&key("k2", "c"), ADMIN).await?;
    s.revoke_key("c", "k1", ADMIN).await?;
    let d = s.load_all().await?;
    assert_eq!(d.version, s.version().await?);
    assert_eq!(d.tenants, vec![tenant("acme")]);
    assert_eq!(d.apis, vec![api("acme", "accounts", "doc")]);
    assert_eq!(d.plans.len(), 1);
    assert_eq!(d.plans[0].body, json!({"rate": 5}));
    assert_eq!(d.consumers[0].id, "c");
    assert_eq!(d.keys, vec![key("k2", "c")]);
    Ok(())
}

fn delta(minute_ms: i64, consumer: &str, api: &str, requests: u64) -> UsageDelta {
    let mut latency_buckets = vec![0; LATENCY_BUCKETS];
    latency_buckets[latency_bucket(12.0)] = requests;
    UsageDelta {
        minute_ms,
        tenant: "t".into(),
        consumer: consumer.into(),
        api: api.into(),
        requests,
        status_2xx: requests,
        status_4xx: 0,
        status_5xx: 0,
        throttled: 0,
        latency_buckets,
    }
}

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a day boundary
const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

fn query(bucket_ms: i64) -> UsageQuery {
    UsageQuery {
        consumer: None,
        api: None,
        from_ms: T0,
        to_ms: T0 + 2 * DAY,
        bucket_ms,
        ..UsageQuery::default()
    }
}

async fn usage_upsert_add_concurrent_exact(f: &Fixture) -> Result<()> {
    // Two writers (as two gateway nodes would, each with its own pool) add to the same rows.
    let other = Store::open(&f.url).await?;
    let writer = |store: Store, node: u64| {
        tokio::spawn(async move {
            for i in 0..40u64 {
                let mut d = delta(T0, "c", "api", 1);
                d.status_4xx = node;
                d.throttled = i % 2;
                d.latency_buckets[0] = 1;
                // Same row twice in one batch, plus a row of its own.
                let mine = delta(T0 + MIN, &format!("node{node}"), "api", 2);
                store.add_usage(&[d.clone(), d, mine]).await?;
            }
            anyhow::Ok(())
        })
    };
    let (a, b) = tokio::join!(writer(f.store.clone(), 1), writer(other, 2));
    a??;
    b??;
    let rows = f.store.query_usage(&query(MIN)).await?;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let shared = &rows[0];
    assert_eq!((shared.start_ms, shared.consumer.as_str()), (T0, "c"));
    assert_eq!(shared.requests, 160);
    assert_eq!(shared.status_2xx, 160);
    assert_eq!(shared.status_4xx, 2 * 40 + 2 * 2 * 40);
    assert_eq!(shared.throttled, 2 * 2 * 20);
    assert_eq!(shared.latency_buckets[0], 160);
    assert_eq!(shared.latency_buckets[latency_bucket(12.0)], 160);
    assert_eq!(shared.latency_buckets.iter().sum::<u64>(), 320);
    for (row, node) in rows[1..].iter().zip(["node1", "node2"]) {
        assert_eq!(
            (row.start_ms, row.consumer.as_str(), row.requests),
            (T0 + MIN, node, 80)
        );
    }
    // Usage is not configuration: no version, no audit.
    assert_eq!(f.store.version().await?, 0);
    assert!(f.store.audit(Page::first(10)).await?.is_empty());
    // Too many buckets is refused.
    let mut bad = delta(T0, "c", "api", 1);
    bad.latency_buckets.push(1);
    assert!(matches!(
        f.store.add_usage(&[bad]).await,
        Err(StoreError::Invalid(_))
    ));
    Ok(())
}

async fn usage_pages_in_byte_order(f: &Fixture) -> Result<()> {
    let s = &f.store;
    // Ids a locale's collation would order differently (it may skip `-` and `_` and fold
    // case); the pages follow bytes, as the cursor does.
    let consumers = ["a_b", "a-c", "aB", "A", "ab", "b"];
    let mut deltas = Vec::new();
    for (i, c) in consumers.iter().enumerate() {
        for (j, api) in ["x", "y"].iter().enumerate() {
            // Most in one hour, where the order of the ids decides; two in the next.
            let mut d = delta(T0 + i64::from(i >= 4) * HOUR, c, api, 1 + j as u64);
            d.latency_buckets = vec![0; LATENCY_BUCKETS];
            d.latency_buckets[i] = 1 + j as u64;
            deltas.push(d);
        }
    }
    s.add_usage(&deltas).await?;
    let all = s.query_usage(&query(HOUR)).await?;
    let keys: Vec<UsageKey> = all.iter().map(|r| r.key()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        keys, sorted,
        "ordered by start, then consumer and API bytes"
    );
    assert_eq!(all.len(), 12);

    // Pages of five from each page's last key make up the whole, histograms included.
    let mut paged = Vec::new();
    let mut q = query(HOUR);
    q.limit = Some(5);
    loop {
        let page = s.query_usage(&q).await?;
        assert!(page.len() <= 5);
        let Some(last) = page.last() else { break };
        q.after = Some(last.key());
        paged.extend(page);
    }
    assert_eq!(paged, all);
    for r in &all {
        let i = consumers
            .iter()
            .position(|c| *c == r.consumer)
            .unwrap_or(99);
        assert_eq!(r.latency_buckets[i], r.requests, "{r:?}");
        assert_eq!(r.latency_buckets.iter().sum::<u64>(), r.requests);
    }

    // Another tenant's API of the same id is another row, and a tenant sees its own only.
    let mut other = delta(T0, "a_b", "y", 100);
    other.tenant = "u".into();
    s.add_usage(&[other]).await?;
    let all = s.query_usage(&query(HOUR)).await?;
    assert_eq!(all.len(), 13);
    let pair: Vec<_> = all
        .iter()
        .filter(|r| r.consumer == "a_b" && r.api == "y")
        .map(|r| (r.tenant.as_str(), r.requests))
        .collect();
    assert_eq!(
        pair,
        [("t", 2), ("u", 100)],
        "ordered by tenant between them"
    );
    let mut q = query(HOUR);
    q.tenant = Some("u".into());
    let theirs = s.query_usage(&q).await?;
    assert_eq!(theirs.len(), 1);
    assert_eq!((theirs[0].tenant.as_str(), theirs[0].requests), ("u", 100));
    assert_eq!(theirs[0].latency_buckets[latency_bucket(12.0)], 100);
    q.tenant = Some("t".into());
    q.api = Some("y".into());
    let ours = s.query_usage(&q).await?;
    assert_eq!(ours.len(), 6);
    assert!(ours.iter().all(|r| r.tenant == "t" && r.api == "y"));
    // Pages across the two tenants' rows of one consumer and API.
    let mut q = query(HOUR);
    q.limit = Some(1);
    let mut paged = Vec::new();
    loop {
        let page = s.query_usage(&q).await?;
        let Some(last) = page.last() else { break };
        q.after = Some(last.key());
        paged.extend(page);
    }
    assert_eq!(paged, all);
    Ok(())
}

async fn usage_grouping_minute_hour_day(f: &Fixture) -> Result<()> {
    let s = &f.store;
    s.add_usage(&[
        delta(T0, "a", "x", 1),
        delta(T0 + MIN, "a", "x", 2),
        delta(T0 + 59 * MIN, "a", "x", 4),
        delta(T0 + HOUR, "a", "x", 8),
        delta(T0 + HOUR, "a", "y", 16),
        delta(T0 + HOUR, "b", "x", 32),
        delta(T0 + DAY + 5 * MIN, "a", "x", 64),
        // Outside [from, to).
        delta(T0 - MIN, "a", "x", 1000),
        delta(T0 + 2 * DAY, "a", "x", 1000),
    ])
    .await?;
    let summary = |rows: Vec<tollgate_store::UsageRow>| {
        rows.into_iter()
            .map(|r| (r.start_ms - T0, r.consumer, r.api, r.requests))
            .collect::<Vec<_>>()
    };
    let s_ = |c: &str| c.to_string();
    let minutes = summary(s.query_usage(&query(MIN)).await?);
    assert_eq!(
        minutes,
        [
            (0, s_("a"), s_("x"), 1),
            (MIN, s_("a"), s_("x"), 2),
            (59 * MIN, s_("a"), s_("x"), 4),
            (HOUR, s_("a"), s_("x"), 8),
            (HOUR, s_("a"), s_("y"), 16),
            (HOUR, s_("b"), s_("x"), 32),
            (DAY + 5 * MIN, s_("a"), s_("x"), 64),
        ]
    );
    let hours = summary(s.query_usage(&query(HOUR)).await?);
    assert_eq!(
        hours,
        [
            (0, s_("a"), s_("x"), 7),
            (HOUR, s_("a"), s_("x"), 8),
            (HOUR, s_("a"), s_("y"), 16),
            (HOUR, s_("b"), s_("x"), 32),
            (DAY, s_("a"), s_("x"), 64),
        ]
    );
    let days = summary(s.query_usage(&query(DAY)).await?);
    assert_eq!(
        days,
        [
            (0, s_("a"), s_("x"), 15),
            (0, s_("a"), s_("y"), 16),
            (0, s_("b"), s_("x"), 32),
            (DAY, s_("a"), s_("x"), 64),
        ]
    );
    // Filters.
    let mut q = query(DAY);
    q.consumer = Some("a".into());
    q.api = Some("x".into());
    assert_eq!(
        summary(s.query_usage(&q).await?),
        [(0, s_("a"), s_("x"), 15), (DAY, s_("a"), s_("x"), 64)]
    );
    q.api = None;
    assert_eq!(s.query_usage(&q).await?.len(), 3);
    let mut q = query(DAY);
    q.api = Some("y".into());
    assert_eq!(
        summary(s.query_usage(&q).await?),
        [(0, s_("a"), s_("y"), 16)]
    );
    // Histograms are summed along with the counters.
    let day0 = &s.query_usage(&query(DAY)).await?[0];
    assert_eq!(day0.latency_buckets[latency_bucket(12.0)], 15);
    assert_eq!(day0.latency_buckets.len(), LATENCY_BUCKETS);
    assert!(matches!(
        s.query_usage(&query(0)).await,
        Err(StoreError::Invalid(_))
    ));
    Ok(())
}

async fn usage_quantiles_from_stored_histograms(f: &Fixture) -> Result<()> {
    let s = &f.store;
    // 90 fast requests (<= 1 ms) and 10 slow ones in (200, 300] ms, split over two minutes.
    let mut fast = delta(T0, "a", "x", 90);
    fast.latency_buckets = vec![0; LATENCY_BUCKETS];
    fast.latency_buckets[0] = 90;
    let mut slow = delta(T0 + MIN, "a", "x", 10);
    slow.latency_buckets = vec![0; LATENCY_BUCKETS];
    let slow_bucket = latency_bucket(250.0);
    slow.latency_buckets[slow_bucket] = 10;
    assert_eq!(LATENCY_BOUNDS_MS[slow_bucket], 300.0);
    s.add_usage(&[fast, slow]).await?;
    let hour = &s.query_usage(&query(HOUR)).await?[0];
    assert_eq!(hour.requests, 100);
    let p50 = hour.latency_quantile_ms(0.5).context("p50")?;
    assert!((p50 - 50.0 / 90.0).abs() < 1e-9, "{p50}");
    let p95 = hour.latency_quantile_ms(0.95).context("p95")?;
    assert!((p95 - 250.0).abs() < 1e-9, "{p95}");
    let p99 = hour.latency_quantile_ms(0.99).context("p99")?;
    assert!((p99 - 290.0).abs() < 1e-9, "{p99}");
    // A row without latency samples has no quantile.
    let mut none = delta(T0 + DAY, "b", "x", 3);
    none.latency_buckets.clear();
    s.add_usage(&[none]).await?;
    let mut q = query(DAY);
    q.consumer = Some("b".into());
    let rows = s.query_usage(&q).await?;
    assert_eq!(rows[0].requests, 3);
    assert_eq!(rows[0].latency_quantile_ms(0.5), None);
    Ok(())
}

async fn top_consumers_by_requests(f: &Fixture) -> Result<()> {
    let s = &f.store;
    s.add_usage(&[
        delta(T0, "old", "x", 1000),
        delta(T0 + MIN, "a", "x", 5),
        delta(T0 + MIN, "a", "y", 5),
        delta(T0 + 2 * MIN, "b", "x", 20),
        delta(T0 + 2 * MIN, "c", "x", 10),
    ])
    .await?;
    let top = s.top_consumers(T0 + MIN).await?;
    assert_eq!(
        top,
        [
            ("b".to_string(), 20),
            ("a".to_string(), 10),
            ("c".to_string(), 10)
        ]
    );
    assert!(s.top_consumers(T0 + 3 * MIN).await?.is_empty());
    Ok(())
}

async fn persists_across_reopen(f: &Fixture) -> Result<()> {
    let s = &f.store;
    s.create_tenant(&tenant("acme"), ADMIN).await?;
    s.put_api(&api("acme", "accounts", "doc"), ADMIN).await?;
    s.add_usage(&[delta(T0, "a", "x", 3)]).await?;
    let before = s.load_all().await?;
    s.close().await;
    // Opening again runs the migrations again: they must be recorded as applied.
    let again = Store::open(&f.url).await?;
    assert_eq!(again.load_all().await?, before);
    assert_eq!(again.query_usage(&query(DAY)).await?[0].requests, 3);
    again.create_plan("gold", &json!({}), ADMIN).await?;
    assert_eq!(again.version().await?, before.version + 1);
    Ok(())
}

#[tokio::test]
async fn sqlite_in_memory_works_with_one_connection() -> Result<()> {
    let s = Store::open("sqlite::memory:").await?;
    assert_eq!(s.backend(), Backend::Sqlite);
    s.create_tenant(&tenant("acme"), ADMIN).await?;
    // Concurrent users of the single connection queue up instead of seeing another database.
    let (a, b) = tokio::join!(s.get_tenant("acme"), s.list_tenants(Page::first(5)));
    assert_eq!(a?, Some(tenant("acme")));
    assert_eq!(b?.len(), 1);
    // A second in-memory store is a different database.
    let other = Store::open("sqlite::memory:").await?;
    assert_eq!(other.get_tenant("acme").await?, None);
    Ok(())
}

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode() -> Result<()> {
    let dir = TempDir::new("tollgate-store")?;
    // The folder is created too.
    let path = dir.path().join("state/fresh.db");
    let s = Store::open(&format!("sqlite://{}", path.display())).await?;
    assert!(path.exists());
    s.create_tenant(&tenant("acme"), ADMIN).await?;
    // WAL keeps a -wal file beside the database while connections are open.
    assert!(dir.path().join("state/fresh.db-wal").exists());
    Ok(())
}

#[tokio::test]
async fn errors_never_show_the_password() -> Result<()> {
    // Nothing listens on port 1: the connection fails.
    let err = Store::open("postgres://tollgate:hunter2secret@127.0.0.1:1/db")
        .await
        .err()
        .context("expected an error")?;
    let text = format!("{err} {err:?}");
    assert!(matches!(err, StoreError::Backend(_)), "{text}");
    assert!(!text.contains("hunter2secret"), "{text}");
    // The cause, not just a pool timeout.
    assert!(text.to_lowercase().contains("refused"), "{text}");
    Ok(())
}

#[tokio::test]
async fn postgres_store_debug_hides_the_password() -> Result<()> {
    // The test server trusts every loopback connection, so any password gets in.
    let url = PostgresServer::shared()?
        .create_database()?
        .replace("postgres@", "postgres:hunter2secret@");
    let store = Store::open(&url).await?;
    store.create_tenant(&tenant("acme"), ADMIN).await?;
    let debug = format!("{store:?}");
    assert!(!debug.contains("hunter2secret"), "{debug}");
    Ok(())
}

#[tokio::test]
async fn unknown_url_scheme_is_invalid() {
    let r = Store::open("mysql://root@localhost/db").await;
    assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
}
