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
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/bank/gateway.yaml")
}

/// Starts the sample backends and prints what to try.
pub fn start(gateway: &Gateway) -> Result<()> {
    for (name, port) in BACKENDS {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
        match std::net::TcpListener::bind(addr).and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        }) {
            Ok(l) => {
                tokio::spawn(echo_server(l, name));
            }
            // Someone else (a test, a real service) already answers there: use it.
            Err(e) => {
                tracing::warn!(backend = name, %addr, error = %e, "sample backend not started")
            }
        }
    }
    let snap = gateway.snapshot();
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
  curl -i http://{public}/v2/accounts/42\n\
  curl -i 'http://{public}/accounts/42?version=1'          # version by query: v1, deprecated\n\
  curl -i -H 'Accept: application/vnd.bank.v1+json' http://{public}/accounts/42\n\
  curl -i http://{public}/v0/accounts/42                   # retired: 410 Gone\n\
  curl -i -X DELETE http://{public}/v2/accounts/42         # 405 with Allow\n\
  curl -i --http2-prior-knowledge http://{public}/v1/fx/rates\n\
  curl -i --cacert {ca} --resolve api.bank.test:{tls}:127.0.0.1 https://api.bank.test:{tls}/v2/accounts/42\n\
  curl -s http://{admin}/metrics | grep tollgate_requests_total\n\
  curl -i -X POST -H \"Authorization: Bearer $TOLLGATE_ADMIN_TOKEN\" http://{admin}/admin/reload\n",
        ca = ca.display()
    );
    Ok(())
}

async fn echo_server(listener: tokio::net::TcpListener, name: &'static str) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(move |req| echo(name, req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
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
