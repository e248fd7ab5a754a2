//! The management plane through the real binary, as `spec/ADMIN.md` fixes it: roles and tenant
//! isolation, APIs registered as OpenAPI documents going live (and clashes refused), plans,
//! consumers and keys taking effect, config-file entities read-only, usage counted exactly,
//! everything surviving a restart, and changes made on one node live on another within 2 s.
//! The main flow runs on embedded SQLite and on a real PostgreSQL.

use crate::common::*;
use anyhow::{Context, Result};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tollgate_testkit::postgres::PostgresServer;
use tollgate_testkit::{
    ADMIN_TOKEN, Gateway, Signal, TempDir, Upstream, assert_problem, eventually,
};

const SECRET: &str = "admin-it-secret-0123456789";

fn hash(value: &str) -> String {
    keyed_hash(SECRET, value)
}

/// A file-defined tenant, API, plan and consumer beside whatever the admin API adds.
pub(crate) fn config(dir: &TempDir, up: &Upstream) -> String {
    let secret = dir.path().join("hash-secret");
    std::fs::write(&secret, SECRET).expect("write secret");
    format!(
        r#"
listeners:
  public: {{ addr: "127.0.0.1:0" }}
  admin: {{ addr: "127.0.0.1:0" }}
identity:
  hash_secret_file: "{secret}"
  token_issuer:
    issuer: https://gateway.test
    audience: test-api
    signing_key: "{signing_key}"
plans:
  file-plan: {{ rate: 1000, burst: 1000 }}
consumers:
  file-consumer: {{ plan: file-plan, api_keys: [{{ id: f1, hash: "{file_key}" }}] }}
upstreams:
  up: {{ targets: [{{ url: "{url}" }}] }}
tenants:
  retail:
    apis:
      accounts:
        upstream: up
        auth: {{ any: [api_key] }}
        routes:
          - {{ id: account, path: "/v1/accounts/{{id}}", methods: [GET] }}
"#,
        secret = secret.display(),
        signing_key = tollgate_testkit::workspace_root()
            .join("examples/bank/secrets/token-signing-key.pem")
            .display(),
        file_key = hash("file-key"),
        url = up.url(),
    )
}

fn widgets_doc(up: &Upstream) -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Widgets", "version": "1.0.0"},
        "x-tollgate": {"upstream": up.url()},
        "paths": {
            "/widgets/{id}": {
                "get": {
                    "operationId": "getWidget",
                    "x-tollgate": {"auth": ["api_key"]},
                    "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "a widget"}}
                }
            }
        }
    })
}

/// The admin API of one node, with a bearer token.
struct Admin {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Admin {
    fn new(gw: &Gateway, token: &str) -> Self {
        Self {
            base: gw.admin_url(),
            token: token.to_owned(),
            http: gw.client(),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut r = self.req(method.clone(), path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        if status.is_client_error() || status.is_server_error() {
            // Every admin error is a problem document.
            assert_problem(status, &headers, &bytes, status.as_u16());
        }
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{method} {path}: {}", String::from_utf8_lossy(&bytes)))?
        };
        Ok((status, v))
    }

    async fn get(&self, path: &str) -> Result<(StatusCode, Value)> {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> Result<(StatusCode, Value)> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    async fn put(&self, path: &str, body: Value) -> Result<(StatusCode, Value)> {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }
    async fn patch(&self, path: &str, body: Value) -> Result<(StatusCode, Value)> {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }
    async fn delete(&self, path: &str) -> Result<StatusCode> {
        Ok(self.call(reqwest::Method::DELETE, path, None).await?.0)
    }
}

async fn status_with_key(gw: &Gateway, path: &str, key: &str) -> Result<u16> {
    Ok(gw
        .client()
        .get(gw.url(path))
        .header("x-api-key", key)
        .send()
        .await?
        .status()
        .as_u16())
}

/// Polls until `path` answers `want` with `key`; returns how long it took.
async fn wait_status(
    gw: &Gateway,
    path: &str,
    key: &str,
    want: u16,
    within: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let got = status_with_key(gw, path, key).await?;
        if got == want {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < within,
            "{path} still answers {got}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The whole ADMIN.md surface against one running node.
async fn admin_flow(gw: &Gateway, up: &Upstream) -> Result<()> {
    let admin = Admin::new(gw, ADMIN_TOKEN);

    // Who may do what.
    let anon = gw
        .client()
        .get(format!("{}/admin/tenants", gw.admin_url()))
        .send()
        .await?;
    assert_eq!(anon.status(), 401);
    let wrong = Admin::new(gw, "not-a-token");
    assert_eq!(wrong.get("/admin/tenants").await?.0, 401);
    // A wrong method: the caller is checked first, then the answer is a problem with `Allow`.
    let anon = gw
        .client()
        .patch(format!("{}/admin/tenants", gw.admin_url()))
        .send()
        .await?;
    assert_eq!(anon.status(), 401);
    let r = admin
        .req(reqwest::Method::PATCH, "/admin/tenants")
        .send()
        .await?;
    let (status, headers) = (r.status(), r.headers().clone());
    assert_problem(status, &headers, &r.bytes().await?, 405);
    let allow = headers
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert_eq!(
        gw.client()
            .get(format!("{}/health/ready", gw.admin_url()))
            .send()
            .await?
            .status(),
        200
    );

    // Tenants.
    let (s, t) = admin
        .post("/admin/tenants", json!({"id": "acme", "name": "Acme"}))
        .await?;
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["id"], "acme");
    assert_eq!(
        admin
            .post("/admin/tenants", json!({"id": "acme", "name": "Acme"}))
            .await?
            .0,
        409
    );
    assert_eq!(
        admin
            .post("/admin/tenants", json!({"id": "globex", "name": "Globex"}))
            .await?
            .0,
        201
    );
    assert_eq!(
        admin
            .post("/admin/tenants", json!({"id": "bad id!", "name": "x"}))
            .await?
            .0,
        422
    );
    let (_, list) = admin.get("/admin/tenants?limit=1").await?;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let mut seen = vec![
        list["items"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ];
    let mut cursor = list["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let (_, page) = admin
            .get(&format!("/admin/tenants?limit=1&cursor={c}"))
            .await?;
        seen.push(
            page["items"][0]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(
        seen,
        ["acme", "globex", "retail"],
        "file tenant listed too, in id order"
    );

    // A tenant admin: its own APIs only.
    let (s, tok) = admin.post("/admin/tenants/acme/tokens", json!({})).await?;
    assert_eq!(s, 201, "{tok}");
    let acme = Admin::new(gw, tok["token"].as_str().context("token")?);
    assert_eq!(acme.get("/admin/tenants").await?.0, 403);
    assert_eq!(
        acme.post("/admin/plans", json!({"id": "p", "rate": 1, "burst": 1}))
            .await?
            .0,
        403
    );
    assert_eq!(
        acme.post("/admin/tenants/acme/tokens", json!({})).await?.0,
        403
    );
    assert_eq!(acme.get("/admin/tenants/globex").await?.0, 404);
    assert_eq!(
        acme.put("/admin/tenants/globex/apis/x", widgets_doc(up))
            .await?
            .0,
        404
    );
    assert_eq!(acme.get("/admin/tenants/acme").await?.0, 200);

    // Registration: live at once on this node; replacing answers 200.
    let (s, v) = acme
        .put("/admin/tenants/acme/apis/widgets", widgets_doc(up))
        .await?;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        status_with_key(gw, "/widgets/1", "").await?,
        401,
        "the document asks for an API key"
    );
    let (s, _) = acme
        .put("/admin/tenants/acme/apis/widgets", widgets_doc(up))
        .await?;
    assert_eq!(s, 200);
    assert_eq!(
        gw.admin_reload().await?.status(),
        200,
        "a file reload keeps registered APIs"
    );
    assert_eq!(status_with_key(gw, "/widgets/1", "").await?, 401);
    let (s, doc) = acme.get("/admin/tenants/acme/apis/widgets").await?;
    assert_eq!(
        (s, &doc),
        (StatusCode::OK, &widgets_doc(up)),
        "the stored document as submitted"
    );

    // Bad documents and clashes: 422 listing each problem, nothing changes.
    let (s, p) = acme
        .put("/admin/tenants/acme/apis/broken", json!({"openapi": "2.0", "paths": {"/x": {"get": {"x-tollgate": {"auth": ["magic"]}}}}}))
        .await?;
    assert_eq!(s, 422);
    let errors = p["errors"].as_array().context("errors")?;
    assert!(errors.len() >= 2, "{p}");
    assert!(
        errors
            .iter()
            .all(|e| e["pointer"].is_string() && e["message"].is_string()),
        "{p}"
    );
    let mut clash = widgets_doc(up);
    clash["paths"]["/v1/accounts/{id}"] = clash["paths"]["/widgets/{id}"].clone();
    let (s, p) = admin.put("/admin/tenants/globex/apis/clash", clash).await?;
    assert_eq!(s, 422, "{p}");
    assert_eq!(
        admin.get("/admin/tenants/globex/apis/clash").await?.0,
        404,
        "nothing stored"
    );
    assert_eq!(
        status_with_key(gw, "/v1/accounts/1", "file-key").await?,
        200,
        "the file's route is untouched"
    );
    // A path another API serves is that API's, whatever the method; so is a literal path its
    // template would match, which the router would otherwise prefer.
    for (path, method) in [
        ("/v1/accounts/{id}", "post"),
        ("/v1/accounts/{acct}", "delete"),
        ("/v1/accounts/special", "get"),
        ("/widgets/{id}", "put"),
    ] {
        let mut doc = widgets_doc(up);
        doc["paths"] = json!({ path: { method: {
            "x-tollgate": {"auth": []},
            "responses": {"200": {"description": "ok"}}
        }}});
        let (s, p) = acme.put("/admin/tenants/acme/apis/steal", doc).await?;
        assert_eq!(s, 422, "{method} {path}: {p}");
        let errors = p["errors"].as_array().context("errors")?;
        let pointer = format!("/paths/{}", path.replace('/', "~1"));
        assert!(
            errors.len() == 1 && errors[0]["pointer"] == pointer.as_str(),
            "{method} {path}: {p}"
        );
        assert!(
            !p.to_string().contains("retail"),
            "names another tenant: {p}"
        );
    }
    // Nor may a registered API lead back into the gateway: its admin API on the public port.
    for url in [gw.admin_url(), gw.public_url()] {
        let mut doc = widgets_doc(up);
        doc["x-tollgate"]["upstream"] = json!(url);
        doc["paths"] = json!({ "/steal/metrics": { "get": {
            "x-tollgate": {"auth": []},
            "responses": {"200": {"description": "ok"}}
        }}});
        let (s, p) = acme.put("/admin/tenants/acme/apis/steal", doc).await?;
        assert_eq!(s, 422, "{url}: {p}");
        assert_eq!(p["errors"][0]["pointer"], "/x-tollgate/upstream", "{p}");
    }
    assert_eq!(acme.get("/admin/tenants/acme/apis/steal").await?.0, 404);
    assert_eq!(
        status_with_key(gw, "/v1/accounts/special", "file-key").await?,
        200,
        "still the file's route"
    );

    // Plans, consumers, keys.
    let (s, p) = admin
        .post("/admin/plans", json!({"id": "tiny", "rate": 0.01, "burst": 2, "quota": {"limit": 1000, "period": "day"}}))
        .await?;
    assert_eq!(s, 201, "{p}");
    assert_eq!(
        admin
            .post(
                "/admin/plans",
                json!({"id": "roomy", "rate": 1000, "burst": 1000})
            )
            .await?
            .0,
        201
    );
    assert_eq!(
        admin
            .post("/admin/plans", json!({"id": "neg", "rate": -1, "burst": 1}))
            .await?
            .0,
        422
    );
    let (s, c) = admin
        .post(
            "/admin/consumers",
            json!({"id": "acme-app", "plan": "tiny", "scopes": ["widgets:read"]}),
        )
        .await?;
    assert_eq!(s, 201, "{c}");
    assert_eq!(
        admin
            .post(
                "/admin/consumers",
                json!({"id": "ghost", "plan": "no-such-plan"})
            )
            .await?
            .0,
        422
    );
    let (s, k) = admin
        .post("/admin/consumers/acme-app/keys", json!({}))
        .await?;
    assert_eq!(s, 201, "{k}");
    let key = k["key"].as_str().context("key")?.to_owned();
    assert!(key.starts_with(k["prefix"].as_str().context("prefix")?));
    let (_, got) = admin.get("/admin/consumers/acme-app").await?;
    assert!(
        !got.to_string().contains(&key),
        "the key is shown only once"
    );

    assert_eq!(status_with_key(gw, "/widgets/1", &key).await?, 200);
    assert_eq!(status_with_key(gw, "/widgets/2", &key).await?, 200);
    assert_eq!(
        status_with_key(gw, "/widgets/3", &key).await?,
        429,
        "plan tiny: burst 2"
    );
    let (s, c) = admin
        .patch("/admin/consumers/acme-app", json!({"plan": "roomy"}))
        .await?;
    assert_eq!(s, 200, "{c}");
    let r = gw
        .client()
        .get(gw.url("/widgets/4"))
        .header("x-api-key", &key)
        .send()
        .await?;
    assert_eq!(r.status(), 200, "plan change applies: {}", r.text().await?);
    let (s, _) = admin
        .patch(
            "/admin/consumers/acme-app",
            json!({"override": {"rate": 0.01, "burst": 1, "expires_at": "2099-01-01T00:00:00Z"}}),
        )
        .await?;
    assert_eq!(s, 200);
    assert_eq!(status_with_key(gw, "/widgets/5", &key).await?, 200);
    assert_eq!(
        status_with_key(gw, "/widgets/6", &key).await?,
        429,
        "the override's own bucket"
    );
    assert_eq!(
        admin
            .patch("/admin/consumers/acme-app", json!({"override": null}))
            .await?
            .0,
        200
    );
    assert_eq!(status_with_key(gw, "/widgets/7", &key).await?, 200);

    // ETag / If-Match.
    let resp = admin
        .req(reqwest::Method::GET, "/admin/plans/roomy")
        .send()
        .await?;
    let etag = resp
        .headers()
        .get("etag")
        .context("etag")?
        .to_str()?
        .to_owned();
    let stale = admin
        .req(reqwest::Method::PUT, "/admin/plans/roomy")
        .header("if-match", "\"stale\"")
        .json(&json!({"rate": 500, "burst": 500}))
        .send()
        .await?;
    assert_eq!(stale.status(), 412);
    let fresh = admin
        .req(reqwest::Method::PUT, "/admin/plans/roomy")
        .header("if-match", &etag)
        .json(&json!({"rate": 1000, "burst": 1000}))
        .send()
        .await?;
    assert_eq!(fresh.status(), 200);

    // Config-file entities: visible, read-only.
    let (_, plans) = admin.get("/admin/plans").await?;
    assert!(
        plans["items"]
            .as_array()
            .context("items")?
            .iter()
            .any(|p| p["id"] == "file-plan" && p["read_only"] == true)
    );
    assert_eq!(
        admin
            .put("/admin/plans/file-plan", json!({"rate": 1, "burst": 1}))
            .await?
            .0,
        409
    );
    assert_eq!(
        admin
            .patch("/admin/consumers/file-consumer", json!({"plan": "roomy"}))
            .await?
            .0,
        409
    );
    assert_eq!(admin.delete("/admin/tenants/retail").await?, 409);
    assert_eq!(
        admin.delete("/admin/plans/roomy").await?,
        409,
        "a consumer is on it"
    );

    // Usage: exact counts for this consumer (7 requests: 5 admitted, 2 throttled).
    let (s, u) = admin
        .get("/admin/usage?consumer=acme-app&granularity=minute")
        .await?;
    assert_eq!(s, 200, "{u}");
    let items = u["items"].as_array().context("items")?;
    let sum = |f: &str| {
        items
            .iter()
            .map(|i| i[f].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert_eq!(
        (
            sum("requests"),
            sum("status_2xx"),
            sum("status_4xx"),
            sum("throttled")
        ),
        (7, 5, 2, 2),
        "{u}"
    );
    assert!(
        items
            .iter()
            .all(|i| i["api"] == "widgets" && i["consumer"] == "acme-app")
    );
    assert!(items[0]["latency_p99_ms"].is_number(), "{u}");
    // `from` and `to` are RFC 3339 with any offset (`+` escaped in a query).
    for (window, want) in [
        (
            "from=2000-01-01T01:00:00%2B01:00&to=2099-12-31T19:00:00-05:00",
            7,
        ),
        (
            "from=2000-01-01t00:00:00.5z&to=2099-01-01T00:00:00-00:00",
            7,
        ),
        ("to=2000-01-01T00:30:00%2B01:00", 0),
    ] {
        let (s, w) = admin
            .get(&format!("/admin/usage?consumer=acme-app&{window}"))
            .await?;
        assert_eq!(s, 200, "{window}: {w}");
        assert_eq!(usage_requests(&w)?, want, "{window}: {w}");
    }
    assert_eq!(
        acme.get("/admin/usage?api=widgets").await?.0,
        200,
        "a tenant reads its own APIs' usage"
    );
    assert_eq!(
        acme.get("/admin/usage?api=accounts").await?.0,
        404,
        "but not another tenant's"
    );
    let (s, own) = acme.get("/admin/usage?granularity=minute").await?;
    assert_eq!(s, 200, "{own}");
    let own = own["items"].as_array().context("items")?;
    assert!(
        !own.is_empty()
            && own
                .iter()
                .all(|i| i["api"] == "widgets" && i["tenant"] == "acme"),
        "{own:?}"
    );
    // Asking for another tenant changes nothing for a tenant admin.
    let (s, asked) = acme
        .get("/admin/usage?granularity=minute&tenant=retail")
        .await?;
    assert_eq!(s, 200, "{asked}");
    assert_eq!(asked["items"].as_array().context("items")?, own);
    let (_, retail) = admin
        .get("/admin/usage?granularity=minute&tenant=retail")
        .await?;
    let retail = retail["items"].as_array().context("items")?;
    assert!(retail.iter().all(|i| i["tenant"] == "retail"), "{retail:?}");
    let (_, top) = admin.get("/admin/top-consumers?window=60s").await?;
    assert_eq!(top["items"][0]["consumer"], "acme-app", "{top}");
    // Both page like every list: one item at a time gives the whole list, in order.
    for base in [
        "/admin/usage?granularity=minute",
        "/admin/top-consumers?window=60s",
    ] {
        let (_, all) = admin.get(&format!("{base}&limit=1000")).await?;
        let all = all["items"].as_array().context("items")?.clone();
        let (mut paged, mut cursor) = (Vec::new(), String::new());
        loop {
            let (s, page) = admin.get(&format!("{base}&limit=1{cursor}")).await?;
            assert_eq!(s, 200, "{page}");
            paged.extend(page["items"].as_array().context("items")?.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break,
            }
            assert!(paged.len() <= all.len(), "{base}: pages never end");
        }
        assert_eq!(paged, all, "{base}");
        assert_eq!(admin.get(&format!("{base}&limit=0")).await?.0, 400);
        assert_eq!(admin.get(&format!("{base}&cursor=%25%25")).await?.0, 400);
    }
    // A cursor names a row: base64 of anything else is refused, not read as the start.
    assert_eq!(
        admin.get("/admin/usage?cursor=bm90LWEta2V5").await?.0,
        400,
        "`not-a-key`"
    );

    // Rotation: a new key replaces the old at once.
    let (s, r) = admin
        .post(
            &format!(
                "/admin/consumers/acme-app/keys/{}/rotate",
                k["id"].as_str().context("id")?
            ),
            json!({}),
        )
        .await?;
    assert_eq!(s, 201, "{r}");
    let rotated = r["key"].as_str().context("rotated key")?.to_owned();
    assert_eq!(
        status_with_key(gw, "/widgets/r1", &key).await?,
        401,
        "the old key is gone"
    );
    assert_eq!(status_with_key(gw, "/widgets/r2", &rotated).await?, 200);
    let (k, key) = (r, rotated);

    // The consumer as an OAuth2 client of the gateway's token endpoint.
    let (s, cs) = admin
        .post("/admin/consumers/acme-app/client-secret", json!({}))
        .await?;
    assert_eq!(s, 201, "{cs}");
    let token = gw
        .client()
        .post(gw.url("/oauth2/token"))
        .basic_auth("acme-app", cs["client_secret"].as_str())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await?;
    assert_eq!(token.status(), 200, "{}", token.text().await?);

    // Revocation and unregistration take effect.
    let key_id = k["id"].as_str().context("key id")?;
    assert_eq!(
        admin
            .delete(&format!("/admin/consumers/acme-app/keys/{key_id}"))
            .await?,
        204
    );
    assert_eq!(status_with_key(gw, "/widgets/8", &key).await?, 401);
    assert_eq!(acme.delete("/admin/tenants/acme/apis/widgets").await?, 204);
    assert_eq!(status_with_key(gw, "/widgets/9", "file-key").await?, 404);
    // An unregistered API's routes leave /metrics too: registering and deleting APIs cannot
    // grow it without bound.
    let text = gw.metrics().await?;
    assert!(text.contains("route=\"account\""), "{text}");
    assert!(!text.contains("getWidget"), "{text}");
    assert_eq!(admin.delete("/admin/tenants/globex").await?, 204);
    assert_eq!(admin.get("/admin/tenants/globex").await?.0, 404);
    Ok(())
}

#[tokio::test]
async fn admin_api_on_embedded_sqlite() -> Result<()> {
    let up = Upstream::echo("widgets").await;
    let dir = TempDir::new("admin")?;
    let gw = Gateway::start(BIN, &config(&dir, &up)).await?;
    admin_flow(&gw, &up).await
}

#[tokio::test]
async fn admin_api_on_postgresql() -> Result<()> {
    let pg = PostgresServer::shared()?;
    let url = pg.create_database()?;
    let up = Upstream::echo("widgets").await;
    let dir = TempDir::new("admin-pg")?;
    let gw = Gateway::builder(BIN, &config(&dir, &up))
        .env("TOLLGATE_DATABASE_URL", &url)
        .start()
        .await?;
    admin_flow(&gw, &up).await
}

#[tokio::test]
async fn the_admin_api_documents_itself_as_openapi_3_1() -> Result<()> {
    let up = Upstream::echo("widgets").await;
    let dir = TempDir::new("admin-doc")?;
    let gw = Gateway::start(BIN, &config(&dir, &up)).await?;
    let admin = Admin::new(&gw, ADMIN_TOKEN);
    let (s, doc) = admin.get("/admin/openapi.json").await?;
    assert_eq!(s, 200);
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1"),
        "{doc}"
    );
    for path in [
        "/admin/tenants",
        "/admin/tenants/{tenant}/apis/{api}",
        "/admin/consumers/{id}/keys",
        "/admin/usage",
        "/admin/top-consumers",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    Ok(())
}

/// Tenant `acme` with the widgets API, plan `roomy`, consumer `app` and one key for it.
async fn onboard(admin: &Admin, up: &Upstream) -> Result<Value> {
    let steps = [
        (
            "POST",
            "/admin/tenants",
            json!({"id": "acme", "name": "Acme"}),
        ),
        ("PUT", "/admin/tenants/acme/apis/widgets", widgets_doc(up)),
        (
            "POST",
            "/admin/plans",
            json!({"id": "roomy", "rate": 1000, "burst": 1000}),
        ),
        (
            "POST",
            "/admin/consumers",
            json!({"id": "app", "plan": "roomy"}),
        ),
    ];
    for (method, path, body) in steps {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let (s, v) = admin.call(method, path, Some(body)).await?;
        anyhow::ensure!(s == 201, "{path}: {s} {v}");
    }
    let (s, k) = admin.post("/admin/consumers/app/keys", json!({})).await?;
    anyhow::ensure!(s == 201, "key: {s} {k}");
    Ok(k)
}

/// Two nodes on one store: a key issued through one works on the other within 2 s, and stops
/// within 2 s of being revoked there. Registered APIs propagate the same way.
async fn propagation(url: &str) -> Result<()> {
    let up = Upstream::echo("widgets").await;
    let (d1, d2) = (TempDir::new("node-a")?, TempDir::new("node-b")?);
    let a = Gateway::builder(BIN, &config(&d1, &up))
        .env("TOLLGATE_DATABASE_URL", url)
        .start()
        .await?;
    let b = Gateway::builder(BIN, &config(&d2, &up))
        .env("TOLLGATE_DATABASE_URL", url)
        .start()
        .await?;
    let admin = Admin::new(&a, ADMIN_TOKEN);
    let k = onboard(&admin, &up).await?;
    let key = k["key"].as_str().context("key")?;
    let took = wait_status(&b, "/widgets/1", key, 200, Duration::from_secs(2)).await?;
    eprintln!("issue → live on node b: {took:?}");
    assert_eq!(
        admin
            .delete(&format!(
                "/admin/consumers/app/keys/{}",
                k["id"].as_str().context("id")?
            ))
            .await?,
        204
    );
    let took = wait_status(&b, "/widgets/2", key, 401, Duration::from_secs(2)).await?;
    eprintln!("revoke → dead on node b: {took:?}");
    Ok(())
}

#[tokio::test]
async fn two_nodes_share_changes_through_sqlite_within_two_seconds() -> Result<()> {
    let dir = TempDir::new("shared-db")?;
    propagation(&format!(
        "sqlite://{}",
        dir.path().join("shared.db").display()
    ))
    .await
}

#[tokio::test]
async fn two_nodes_share_changes_through_postgresql_within_two_seconds() -> Result<()> {
    let pg = PostgresServer::shared()?;
    propagation(&pg.create_database()?).await
}

fn doc_at(up: &Upstream, path: &str) -> Value {
    let mut doc = widgets_doc(up);
    doc["paths"] = json!({ path: doc["paths"]["/widgets/{id}"].clone() });
    doc
}

async fn two_nodes(url: &str, up: &Upstream) -> Result<(Gateway, Gateway, TempDir, TempDir)> {
    let (d1, d2) = (TempDir::new("node-a")?, TempDir::new("node-b")?);
    let a = Gateway::builder(BIN, &config(&d1, up))
        .env("TOLLGATE_DATABASE_URL", url)
        .start()
        .await?;
    let b = Gateway::builder(BIN, &config(&d2, up))
        .env("TOLLGATE_DATABASE_URL", url)
        .start()
        .await?;
    Ok((a, b, d1, d2))
}

/// Writes sent to two nodes at the same moment are checked one after the other against
/// what the store holds, not against each node's own (possibly older) snapshot: of two
/// clashing registrations exactly one goes in, a plan cannot be deleted under a consumer
/// being created on it, and `If-Match` lets exactly one of two updates through.
#[tokio::test]
async fn simultaneous_writes_on_two_nodes_are_checked_one_after_the_other() -> Result<()> {
    let pg = PostgresServer::shared()?;
    let up = Upstream::echo("widgets").await;
    let (a, b, _d1, _d2) = two_nodes(&pg.create_database()?, &up).await?;
    let (admin_a, admin_b) = (Admin::new(&a, ADMIN_TOKEN), Admin::new(&b, ADMIN_TOKEN));
    for t in ["acme", "beta"] {
        let (s, v) = admin_a.post("/admin/tenants", json!({ "id": t })).await?;
        assert_eq!(s, 201, "{v}");
    }
    for i in 0..5 {
        let path = format!("/clash/{i}/items/{{id}}");
        let (first, second) = (
            format!("/admin/tenants/acme/apis/first-{i}"),
            format!("/admin/tenants/beta/apis/second-{i}"),
        );
        let (ra, rb) = tokio::join!(
            admin_a.put(&first, doc_at(&up, &path)),
            admin_b.put(&second, doc_at(&up, &path)),
        );
        let mut got = [ra?.0.as_u16(), rb?.0.as_u16()];
        got.sort_unstable();
        assert_eq!(
            got,
            [201, 422],
            "round {i}: one registration of {path} only"
        );
    }

    for i in 0..5 {
        let plan = format!("gone-{i}");
        let (s, _) = admin_a
            .post(
                "/admin/plans",
                json!({ "id": plan, "rate": 10, "burst": 10 }),
            )
            .await?;
        assert_eq!(s, 201);
        let plan_path = format!("/admin/plans/{plan}");
        let (del, add) = tokio::join!(
            admin_a.delete(&plan_path),
            admin_b.post(
                "/admin/consumers",
                json!({ "id": format!("late-{i}"), "plan": plan })
            ),
        );
        let outcome = (del?.as_u16(), add?.0.as_u16());
        assert!(
            outcome == (204, 422) || outcome == (409, 201),
            "round {i}: a plan and a consumer on it cannot both come out as they asked: {outcome:?}"
        );
    }

    let (s, _) = admin_a
        .post(
            "/admin/consumers",
            json!({ "id": "contended", "plan": "file-plan" }),
        )
        .await?;
    assert_eq!(s, 201);
    for i in 0..5 {
        let r = admin_a
            .req(reqwest::Method::GET, "/admin/consumers/contended")
            .send()
            .await?;
        let etag = r.headers()["etag"].clone();
        let patch = |admin: &Admin, scope: &str| {
            admin
                .req(reqwest::Method::PATCH, "/admin/consumers/contended")
                .header("if-match", etag.clone())
                .json(&json!({ "scopes": [scope] }))
                .send()
        };
        // Values new in each round: an update that changes nothing keeps the ETag.
        let (sa, sb) = (format!("a-{i}"), format!("b-{i}"));
        let (ra, rb) = tokio::join!(patch(&admin_a, &sa), patch(&admin_b, &sb));
        let mut got = [ra?.status().as_u16(), rb?.status().as_u16()];
        got.sort_unstable();
        assert_eq!(got, [200, 412], "round {i}: one update per ETag");
    }
    Ok(())
}

/// A stored set that no longer fits (here: rows written around the admin API, as a
/// restore or an older version could leave them) costs only the entities that do not fit.
/// Every other change still reaches every node, a revoked key stops working, and a node
/// started on that store serves the rest.
#[tokio::test]
async fn stored_entities_that_no_longer_fit_are_left_out_alone() -> Result<()> {
    let pg = PostgresServer::shared()?;
    let url = pg.create_database()?;
    let up = Upstream::echo("widgets").await;
    let (a, b, _d1, _d2) = two_nodes(&url, &up).await?;
    let admin = Admin::new(&a, ADMIN_TOKEN);
    let k = onboard(&admin, &up).await?;
    let key = k["key"].as_str().context("key")?;
    wait_status(&b, "/widgets/1", key, 200, Duration::from_secs(2)).await?;

    // A second API on the widgets' path and a consumer on a plan that does not exist, put
    // in behind the admin API's back.
    let clashing = serde_json::to_string(&doc_at(&up, "/widgets/{id}"))?.replace('\'', "''");
    pg.psql_db(
        &url,
        &format!(
            "INSERT INTO apis (tenant, id, document, content_type, updated_at) \
             VALUES ('acme', 'copycat', '{clashing}', 'application/json', 9000000000000); \
             INSERT INTO consumers (id, body, updated_at) \
             VALUES ('orphan', '{{\"plan\":\"no-such-plan\",\"scopes\":[]}}', 0); \
             UPDATE meta SET v = v + 1 WHERE k = 'version';"
        ),
    )?;

    // Later changes still apply everywhere: the key is revoked, a new API goes live.
    let status = admin
        .delete(&format!(
            "/admin/consumers/app/keys/{}",
            k["id"].as_str().context("id")?
        ))
        .await?;
    assert_eq!(status, 204);
    let (s, v) = admin
        .put(
            "/admin/tenants/acme/apis/gadgets",
            doc_at(&up, "/gadgets/{id}"),
        )
        .await?;
    assert_eq!(s, 201, "{v}");
    for node in [&a, &b] {
        wait_status(node, "/widgets/2", key, 401, Duration::from_secs(2)).await?;
        wait_status(node, "/gadgets/2", key, 401, Duration::from_secs(2)).await?;
        let metrics = node.metrics().await?;
        assert!(
            metrics.contains("tollgate_managed_entities_left_out 2"),
            "{metrics}"
        );
    }
    assert!(
        a.stderr_text().contains("stored entity left out")
            && a.stderr_text().contains("copycat")
            && a.stderr_text()
                .contains("`/widgets/{id}` overlaps one acme/widgets serves")
            && a.stderr_text().contains("orphan"),
        "{}",
        a.stderr_text()
    );

    // A node starting on this store serves what fits from its first request.
    let d3 = TempDir::new("node-c")?;
    let c = Gateway::builder(BIN, &config(&d3, &up))
        .env("TOLLGATE_DATABASE_URL", &url)
        .start()
        .await?;
    let (s, k2) = Admin::new(&c, ADMIN_TOKEN)
        .post("/admin/consumers/app/keys", json!({}))
        .await?;
    assert_eq!(s, 201);
    let key2 = k2["key"].as_str().context("key")?;
    assert_eq!(status_with_key(&c, "/widgets/3", key2).await?, 200);
    assert_eq!(status_with_key(&c, "/gadgets/3", key2).await?, 200);
    Ok(())
}

/// Everything created through the API, usage included, survives a restart: also the usage
/// of a request still in flight when the shutdown began.
#[tokio::test]
async fn state_survives_a_restart() -> Result<()> {
    let up = Upstream::slow("widgets", Duration::from_millis(400)).await;
    let db = TempDir::new("persist-db")?;
    let url = format!("sqlite://{}", db.path().join("tollgate.db").display());
    let dir = TempDir::new("persist")?;
    let mut first = Gateway::builder(BIN, &config(&dir, &up))
        .env("TOLLGATE_DATABASE_URL", &url)
        .start()
        .await?;
    let admin = Admin::new(&first, ADMIN_TOKEN);
    let k = onboard(&admin, &up).await?;
    let key = k["key"].as_str().context("key")?.to_owned();
    for i in 0..3 {
        assert_eq!(
            status_with_key(&first, &format!("/widgets/{i}"), &key).await?,
            200
        );
    }
    // One more, answered while the gateway drains.
    let in_flight = {
        let (c, url, key) = (first.client(), first.url("/widgets/last"), key.clone());
        tokio::spawn(async move {
            let r = c.get(url).header("x-api-key", key).send().await?;
            anyhow::Ok(r.status().as_u16())
        })
    };
    let reached = eventually(Duration::from_secs(5), || async {
        (up.hits() >= 4).then_some(())
    })
    .await;
    anyhow::ensure!(
        reached.is_some(),
        "the last request never reached the upstream"
    );
    first.send_signal(Signal::Term)?;
    assert_eq!(in_flight.await??, 200, "drained, not cut off");
    first
        .wait_exit(Duration::from_secs(10))
        .await
        .context("no exit")?;

    let dir2 = TempDir::new("persist2")?;
    let second = Gateway::builder(BIN, &config(&dir2, &up))
        .env("TOLLGATE_DATABASE_URL", &url)
        .start()
        .await?;
    assert_eq!(
        status_with_key(&second, "/widgets/9", &key).await?,
        200,
        "registered API and key live from the first request"
    );
    let admin = Admin::new(&second, ADMIN_TOKEN);
    let (_, u) = admin
        .get("/admin/usage?consumer=app&granularity=day")
        .await?;
    assert_eq!(
        usage_requests(&u)?,
        5,
        "3 before the shutdown, 1 answered during it, 1 after the restart: {u}"
    );
    Ok(())
}

/// A node that loses its database keeps serving the last snapshot it built: registered
/// routes and keys keep working, the admin API says the store is unavailable (503), and
/// nothing panics.
#[tokio::test]
async fn a_node_that_loses_the_database_keeps_serving() -> Result<()> {
    let pg = PostgresServer::start()?;
    let url = pg.create_database()?;
    let up = Upstream::echo("widgets").await;
    let dir = TempDir::new("db-loss")?;
    let gw = Gateway::builder(BIN, &config(&dir, &up))
        .env("TOLLGATE_DATABASE_URL", &url)
        .start()
        .await?;
    let admin = Admin::new(&gw, ADMIN_TOKEN);
    let k = onboard(&admin, &up).await?;
    let key = k["key"].as_str().context("key")?.to_owned();

    drop(pg);
    // Give the poller a few rounds against the dead database.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..20 {
        assert_eq!(
            status_with_key(&gw, &format!("/widgets/{i}"), &key).await?,
            200
        );
    }
    let (s, _) = admin
        .post("/admin/tenants", json!({"id": "later", "name": "Later"}))
        .await?;
    assert_eq!(s, 503, "writes fail clearly while the store is away");
    // A file reload still works: the overlay it merges is the last good one.
    assert_eq!(gw.admin_reload().await?.status(), 200);
    assert_eq!(status_with_key(&gw, "/widgets/x", &key).await?, 200);
    assert!(
        gw.stderr_text().contains("store unreachable"),
        "{}",
        gw.stderr_text()
    );
    Ok(())
}

#[tokio::test]
async fn the_admin_listener_does_not_wait_forever_on_a_client() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::echo("widgets").await;
    let dir = TempDir::new("admin-slow")?;
    let gw = Gateway::start(BIN, &config(&dir, &up)).await?;
    // Half a head, then silence: closed once the header read timeout (10 s) runs out.
    let mut s = tokio::net::TcpStream::connect(gw.admin_addr()).await?;
    s.write_all(b"GET /health/live HTTP/1.1\r\nHost: a\r\n")
        .await?;
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "still open after 30 s");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "closed too early"
    );
    // A whole head and half a body: a 408 problem once the request has had 30 s.
    let mut s = tokio::net::TcpStream::connect(gw.admin_addr()).await?;
    s.write_all(
        format!(
            "POST /admin/tenants HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"id\""
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(45), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("request-timeout") && text.contains("x-request-id"),
        "{text}"
    );
    // The listener still serves.
    let r = gw
        .client()
        .get(format!("{}/health/live", gw.admin_url()))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}
