//! `tollgate demo`: the bank example with built-in sample backends, each answering every
//! request with 200 and a JSON echo of what it received, as the scenario describes.

use anyhow::Result;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::path::PathBuf;
use tollgate_proxy::Gateway;

/// The sample backends of the scenario: name and port.
pub const BACKENDS: &[(&str, u16)] = &[
    ("accounts-v1", 9101),
    ("accounts-v2", 9102),
    ("payments", 9103),
    ("fx", 9104),
    ("ledger", 9105),
];

/// Echoed bodies are capped; larger ones are drained and reported by size.
const ECHO_BODY_LIMIT: usize = 1024 * 1024;

pub fn default_config() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/bank/gateway.yaml");
    std::fs::canonicalize(&p).unwrap_or(p)
}

/// Starts the sample backends, the demo identity provider and authorizer. Before the gateway,
/// so that its first JWKS fetch finds the identity provider up.
pub fn start_servers(base: &std::path::Path) {
    start_idp(&base.join("secrets/demo-idp-key.pem"));
    spawn_server(9191, "authorizer", |req| Box::pin(authorize(req)));
    for (name, port) in BACKENDS {
        spawn_server(*port, name, move |req| Box::pin(echo(name, req)));
    }
}

/// Prints what to try.
pub fn announce(gateway: &Gateway) -> Result<()> {
    let snap = gateway.snapshot();
    let base = snap.loaded.base_dir.clone();
    let cfg = snap.config();
    let public = cfg
        .listeners
        .public
        .as_ref()
        .map(|l| l.addr.0.to_string())
        .unwrap_or_default();
    let admin = cfg
        .listeners
        .admin
        .as_ref()
        .map(|l| l.addr.0.to_string())
        .unwrap_or_default();
    let tls = cfg
        .listeners
        .tls
        .as_ref()
        .map(|l| l.addr.0.port())
        .unwrap_or(8443);
    let ca = snap.loaded.base_dir.join("certs/ca.pem");
    println!(
        "\n\
tollgate demo: the bank partner gateway is up with sample backends on 9101-9105.\n\
Try:\n\
  curl -i -H 'x-api-key: tg_gold_0123456789abcdef' http://{public}/v2/accounts/42\n\
  curl -i http://{public}/v2/accounts/42                   # no credentials: 401 with challenges\n\
  curl -i -H 'x-api-key: tg_gold_0123456789abcdef' 'http://{public}/accounts/42?version=1'   # v1: deprecated\n\
  curl -i -H 'x-api-key: tg_gold_0123456789abcdef' -H 'Accept: application/vnd.bank.v1+json' http://{public}/accounts/42\n\
  curl -i http://{public}/v0/accounts/42                   # retired: 410 Gone\n\
  curl -i -X DELETE http://{public}/v2/accounts/42         # 405 with Allow\n\
  curl -i --http2-prior-knowledge http://{public}/v1/fx/rates\n\
  curl -i --cacert {ca} --resolve api.bank.test:{tls}:127.0.0.1 -H 'x-api-key: tg_trial_0123456789abcdef' https://api.bank.test:{tls}/v2/accounts/42\n\
  curl -s -u partner-gold:cs_gold_0123456789abcdef -d grant_type=client_credentials http://{public}/oauth2/token\n\
  TOKEN=$(curl -s 'http://127.0.0.1:9190/token?sub=partner-gold&scope=payments:write') # the demo IdP\n\
  curl -i -X POST -H 'x-api-key: tg_gold_0123456789abcdef' -H \"Authorization: Bearer $TOKEN\" -H 'Idempotency-Key: 1' -d '{{}}' http://{public}/v1/payments\n\
  curl -i -H 'Authorization: Bearer demo-statements' http://{public}/v1/statements/7   # external authorizer\n\
  curl -i --cacert {ca} --cert {certs}/ledger-reader.pem --key {certs}/ledger-reader-key.pem https://localhost:{tls}/internal/ledger/2026\n\
  curl -i --aws-sigv4 aws:amz:bank-1:execute-api --user AKIDTOLLGATEREPORTS:reports-secret-0123456789abcdef http://{public}/internal/reports/daily   # SigV4\n\
  curl -s http://{admin}/metrics | grep tollgate_requests_total\n\
  curl -i -X POST -H \"Authorization: Bearer $TOLLGATE_ADMIN_TOKEN\" http://{admin}/admin/reload\n",
        ca = ca.display(),
        certs = base.join("certs").display(),
    );
    Ok(())
}

/// Serves `handler` on 127.0.0.1:`port`, unless something already listens there (a test or a
/// real service), which is then used instead.
fn spawn_server<F>(port: u16, name: &'static str, handler: F)
where
    F: Fn(
            Request<Incoming>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>,
        > + Clone
        + Send
        + Sync
        + 'static,
{
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let listener = match std::net::TcpListener::bind(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    }) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(server = name, %addr, error = %e, "demo server not started");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let h = handler.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(h))
                    .await;
            });
        }
    });
}

fn json_response(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The demo identity provider on 9190: publishes its JWKS and mints tokens for any subject
/// (`/token?sub=partner-gold&scope=a b`), so the JWT routes can be tried without a real IdP.
fn start_idp(key: &std::path::Path) {
    let cfg = tollgate_policy::auth::jwt::TokenIssuerConfig {
        issuer: "https://idp.bank.test".into(),
        audience: "bank-api".into(),
        private_key_pem: key.to_path_buf(),
        key_id: None,
        ttl: std::time::Duration::from_secs(900),
    };
    let issuer = match tollgate_policy::auth::jwt::TokenIssuer::new(
        &cfg,
        std::sync::Arc::new(tollgate_core::SystemClock),
    ) {
        Ok(i) => std::sync::Arc::new(i),
        Err(e) => {
            tracing::warn!(error = %e, "demo identity provider not started");
            return;
        }
    };
    spawn_server(9190, "idp", move |req: Request<Incoming>| {
        let issuer = issuer.clone();
        Box::pin(async move {
            if req.uri().path() == "/.well-known/jwks.json" {
                return Ok(json_response(
                    200,
                    String::from_utf8_lossy(&issuer.jwks_json()).into_owned(),
                ));
            }
            let mut sub = String::from("partner-gold");
            let mut scope = String::new();
            for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
                match k.as_ref() {
                    "sub" => sub = v.into_owned(),
                    "scope" => scope = v.into_owned(),
                    _ => {}
                }
            }
            let scopes: Vec<String> = scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            Ok(match issuer.issue(&sub, &sub, &scopes) {
                Ok((token, _)) => {
                    let mut r = Response::new(Full::new(Bytes::from(token)));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain"),
                    );
                    r
                }
                Err(e) => {
                    json_response(400, serde_json::json!({"error": e.to_string()}).to_string())
                }
            })
        })
    });
}

/// The demo external authorizer on 9191: allows `Authorization: Bearer demo-statements` as
/// partner-gold, denies everything else.
async fn authorize(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let allowed = parsed["headers"]["authorization"].as_str() == Some("Bearer demo-statements");
    let answer = if allowed {
        serde_json::json!({"allow": true, "consumer": "partner-gold", "context": {"customer": "42"}})
    } else {
        serde_json::json!({"allow": false})
    };
    Ok(json_response(200, answer.to_string()))
}

async fn echo(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        headers.insert(
            k.as_str().to_string(),
            String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
        );
    }
    let body = match Limited::new(body, ECHO_BODY_LIMIT).collect().await {
        Ok(b) => serde_json::Value::String(String::from_utf8_lossy(&b.to_bytes()).into_owned()),
        Err(_) => serde_json::Value::Null,
    };
    let doc = serde_json::json!({
        "service": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().unwrap_or(""),
        "headers": headers,
        "body": body,
    });
    let mut resp = Response::new(Full::new(Bytes::from(doc.to_string())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
