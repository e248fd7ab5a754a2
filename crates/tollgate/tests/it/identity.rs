//! Identity: API keys, JWTs from a test IdP (JWKS fetch, rotation, outage), `any`/`all` and
//! scopes, the gateway's OAuth2 token endpoint and JWK Set, mTLS, SigV4 and an external
//! authorizer. Every server is real and on loopback port 0: the echo upstream, the IdP (JWKS
//! over HTTP) and the authorizers; tokens are signed here with keys made by `openssl` at test
//! time, and forged ones are put together by hand.

use crate::common::*;
use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tollgate_testkit::{
    Gateway, TempDir, Upstream, assert_problem, bank_certs_dir, dead_addr, eventually,
};

const IDP_ISSUER: &str = "https://idp.test";
const GW_ISSUER: &str = "https://gateway.test";
const AUDIENCE: &str = "bank-api";
const HASH_SECRET: &str = "it-hash-secret-0123456789abcdef";
const ALICE_KEY: &str = "tg_alice_0123456789abcdef";
const BOB_KEY: &str = "tg_bob_0123456789abcdef";
const ALICE_SECRET: &str = "cs_alice_0123456789abcdef";
const BOB_SECRET: &str = "cs_bob_0123456789abcdef";
const AKID: &str = "AKIDTOLLGATEREPORTS";
const SIGV4_SECRET: &str = "reports-secret-0123456789abcdef";

// ---------------------------------------------------------------------------------------------
// Small servers: the IdP's JWKS endpoint and the external authorizers.

/// What a [`Mock`] answers.
struct Reply {
    status: u16,
    body: String,
    delay: Duration,
}

impl Reply {
    fn json(body: Value) -> Self {
        Self {
            status: 200,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
}

type Handler = Arc<dyn Fn(&http::request::Parts, &[u8]) -> Reply + Send + Sync>;

/// An HTTP/1.1 server on its own thread and runtime, counting requests and keeping their
/// bodies; it stops (and its port refuses) when dropped.
struct Mock {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Mock {
    fn start(handler: Handler) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a mock port");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicU64::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (h, b) = (hits.clone(), bodies.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("mock runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
                let accept = async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let (handler, hits, bodies) = (handler.clone(), h.clone(), b.clone());
                        tokio::spawn(async move {
                            let svc =
                                service_fn(move |req: http::Request<hyper::body::Incoming>| {
                                    let (handler, hits, bodies) =
                                        (handler.clone(), hits.clone(), bodies.clone());
                                    async move {
                                        let (parts, body) = req.into_parts();
                                        let body = body
                                            .collect()
                                            .await
                                            .map(|c| c.to_bytes())
                                            .unwrap_or_default();
                                        hits.fetch_add(1, Ordering::SeqCst);
                                        bodies
                                            .lock()
                                            .unwrap_or_else(|p| p.into_inner())
                                            .push(body.to_vec());
                                        let reply = handler(&parts, &body);
                                        if !reply.delay.is_zero() {
                                            tokio::time::sleep(reply.delay).await;
                                        }
                                        let mut resp =
                                            http::Response::new(Full::new(Bytes::from(reply.body)));
                                        *resp.status_mut() =
                                            http::StatusCode::from_u16(reply.status)
                                                .unwrap_or(http::StatusCode::OK);
                                        resp.headers_mut().insert(
                                            http::header::CONTENT_TYPE,
                                            http::HeaderValue::from_static("application/json"),
                                        );
                                        Ok::<_, std::convert::Infallible>(resp)
                                    }
                                });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        Self {
            addr,
            hits,
            bodies,
            _stop: stop_tx,
        }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    fn last_body(&self) -> Option<Value> {
        let b = self.bodies.lock().unwrap_or_else(|p| p.into_inner());
        b.last().and_then(|b| serde_json::from_slice(b).ok())
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// The test IdP: serves whatever key set it holds *now* at `/.well-known/jwks.json`.
struct Idp {
    mock: Mock,
    /// `None`: answer 503.
    jwks: Arc<Mutex<Option<String>>>,
}

impl Idp {
    fn start(keys: &[&SigningKey]) -> Self {
        let jwks = Arc::new(Mutex::new(Some(jwks_json(keys))));
        let j = jwks.clone();
        let mock = Mock::start(Arc::new(move |parts, _| {
            let current = j.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if parts.uri.path() == "/.well-known/jwks.json"
                && let Some(body) = current
            {
                Reply {
                    status: 200,
                    body,
                    delay: Duration::ZERO,
                }
            } else if parts.uri.path() == "/.well-known/jwks.json" {
                Reply {
                    status: 503,
                    body: "{}".into(),
                    delay: Duration::ZERO,
                }
            } else {
                Reply {
                    status: 404,
                    body: "{}".into(),
                    delay: Duration::ZERO,
                }
            }
        }));
        Self { mock, jwks }
    }

    fn serve(&self, keys: &[&SigningKey]) {
        *self.jwks.lock().unwrap_or_else(|p| p.into_inner()) = Some(jwks_json(keys));
    }

    fn fail(&self) {
        *self.jwks.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn fetches(&self) -> u64 {
        self.mock.hits()
    }

    fn jwks_url(&self) -> String {
        self.mock.url("/.well-known/jwks.json")
    }
}

fn jwks_json(keys: &[&SigningKey]) -> String {
    let set = JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    };
    serde_json::to_string(&set).expect("jwks json")
}

// ---------------------------------------------------------------------------------------------
// Keys, hashes and tokens.

fn openssl(args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("run openssl")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

fn ec_key_pem() -> Result<Vec<u8>> {
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ])
}

fn rsa_key_pem() -> Result<Vec<u8>> {
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
    ])
}

/// A private key the test IdP signs with, and its public JWK (with `kid`).
struct SigningKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Jwk,
    pem: Vec<u8>,
}

impl SigningKey {
    fn new(kid: &str, alg: Algorithm) -> Result<Self> {
        let pem = match alg {
            Algorithm::RS256 => rsa_key_pem()?,
            _ => ec_key_pem()?,
        };
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem)?,
            _ => EncodingKey::from_ec_pem(&pem)?,
        };
        let mut jwk = Jwk::from_encoding_key(&key, alg)?;
        jwk.common.key_id = Some(kid.to_string());
        Ok(Self {
            kid: kid.into(),
            alg,
            key,
            jwk,
            pem,
        })
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.key).expect("sign a token")
    }

    /// The public key as PEM (what an attacker would use as an HMAC secret).
    fn public_pem(&self, dir: &Path) -> Result<Vec<u8>> {
        let f = dir.join(format!("{}-priv.pem", self.kid));
        std::fs::write(&f, &self.pem)?;
        openssl(&["pkey", "-in", &f.display().to_string(), "-pubout"])
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Good claims for `sub` from the test IdP, valid for 10 minutes.
fn claims(sub: &str, scope: &str) -> Value {
    let now = now_secs();
    json!({
        "iss": IDP_ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "scope": scope,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": format!("{sub}-{}", fastish_nonce()),
    })
}

fn fastish_nonce() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// `hmac-sha256:` + hex of HMAC-SHA256(secret, value): the config's form of a key or secret.
fn hash(value: &str) -> String {
    keyed_hash(HASH_SECRET, value)
}

fn q(s: &str) -> String {
    Value::from(s).to_string()
}

fn qp(p: &Path) -> String {
    q(&p.display().to_string())
}

// ---------------------------------------------------------------------------------------------
// The fixture: one upstream, an IdP, authorizers and a gateway with a route per scheme.

struct Fx {
    up: Upstream,
    /// `Some` until a test takes it to break it.
    idp: Option<Idp>,
    rsa: SigningKey,
    ec: SigningKey,
    authz: Mock,
    _slow: Mock,
    _bad: Mock,
    gw: Gateway,
    c: reqwest::Client,
    dir: TempDir,
}

const ROUTES: &str = r#"
          - id: key
            path: /key/{id}
            methods: [GET]
            auth: {any: [api_key]}
          - id: jwt
            path: /jwt/{id}
            methods: [GET]
            auth: {any: [jwt]}
          - id: either
            path: /either/{id}
            methods: [GET]
            auth: {any: [api_key, jwt]}
          - id: both
            path: /both/{id}
            methods: [GET]
            auth: {all: [api_key, jwt]}
          - id: pay
            path: /pay/{id}
            methods: [GET]
            auth: {any: [jwt], scopes: ["payments:write"]}
          - id: open
            path: /open/{id}
            methods: [GET]
          - id: reports
            path: /reports/{path}
            methods: [GET]
            auth: {any: [sigv4]}
          - id: ledger
            path: /ledger/{path}
            methods: [GET]
            listeners: [tls]
            auth: {any: [mtls], certificate_subjects: [ledger-reader]}
          - id: stmt
            path: /stmt/{id}
            methods: [GET]
            auth: {any: [authorizer], authorizer: main}
          - id: stmt-slow
            path: /stmt-slow/{id}
            methods: [GET]
            auth: {any: [authorizer], authorizer: slow}
          - id: stmt-bad
            path: /stmt-bad/{id}
            methods: [GET]
            auth: {any: [authorizer], authorizer: bad}
          - id: stmt-down
            path: /stmt-down/{id}
            methods: [GET]
            auth: {any: [authorizer], authorizer: down}
"#;

impl Fx {
    async fn start() -> Result<Self> {
        let dir = TempDir::new("tollgate-identity")?;
        let d = dir.path();
        std::fs::write(d.join("hash-secret"), format!("{HASH_SECRET}\n"))?;
        std::fs::write(d.join("token-key.pem"), ec_key_pem()?)?;
        std::fs::write(d.join("sigv4-secret"), format!("{SIGV4_SECRET}\n"))?;
        let rsa = SigningKey::new("rsa-1", Algorithm::RS256)?;
        let ec = SigningKey::new("ec-1", Algorithm::ES256)?;
        let idp = Idp::start(&[&rsa, &ec]);
        let up = Upstream::echo("accounts").await;

        // The main authorizer: `Bearer allow-*` allows as `stmt-user` with a tier, anything else
        // is denied.
        // The gateway's question is `{"method","path","headers","client_ip"}`.
        let authz = Mock::start(Arc::new(|_, body| {
            let asked: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let auth = asked["headers"]["authorization"].as_str().unwrap_or("");
            if auth.starts_with("Bearer allow-") {
                Reply::json(
                    json!({"allow": true, "consumer": "stmt-user", "context": {"tier": "gold"}}),
                )
            } else {
                Reply::json(json!({"allow": false}))
            }
        }));
        let slow = Mock::start(Arc::new(|_, _| Reply {
            delay: Duration::from_secs(1),
            ..Reply::json(json!({"allow": true, "consumer": "stmt-user"}))
        }));
        let bad = Mock::start(Arc::new(|_, _| Reply {
            status: 200,
            body: "{\"allow\": tru".into(),
            delay: Duration::ZERO,
        }));
        let certs = bank_certs_dir();
        let yaml = format!(
            r#"listeners:
  public:
    addr: "127.0.0.1:0"
  tls:
    addr: "127.0.0.1:0"
    certificates:
      - cert: {server_cert}
        key: {server_key}
  admin:
    addr: "127.0.0.1:0"
access_log:
  enabled: true
  target: stdout
identity:
  hash_secret_file: {hash_secret}
  jwt:
    - issuer: {IDP_ISSUER}
      audiences: [{AUDIENCE}]
      jwks_url: {jwks}
      algorithms: [RS256, ES256]
      leeway: 30s
      refresh_interval: 5m
      min_refetch_interval: 1s
  token_issuer:
    issuer: {GW_ISSUER}
    audience: {AUDIENCE}
    signing_key: {token_key}
    ttl: 10m
  mtls:
    client_ca: {ca}
    subject_header: x-client-cert-subject
  sigv4:
    service: execute-api
    region: bank-1
    max_skew: 5m
  authorizers:
    main:
      url: {authz}
      timeout: 500ms
      cache_ttl: 30s
    slow:
      url: {slow}
      timeout: 300ms
    bad:
      url: {bad}
    down:
      url: {down}
      timeout: 500ms
consumers:
  alice:
    plan: gold
    scopes: [accounts:read, payments:write]
    api_keys:
      - id: alice-1
        hash: {alice_key}
    client_secret_hash: {alice_secret}
  bob:
    plan: silver
    scopes: [accounts:read]
    api_keys:
      - id: bob-1
        hash: {bob_key}
    client_secret_hash: {bob_secret}
  svc-reporting:
    scopes: [reports:read]
    sigv4_keys:
      - access_key: {AKID}
        secret_file: {sigv4_secret}
  ledger-reader:
    scopes: [ledger:read]
    certificate_subjects: [ledger-reader]
upstreams:
  up:
    targets:
      - url: {up_url}
tenants:
  t:
    apis:
      main:
        upstream: up
        routes:{ROUTES}"#,
            server_cert = qp(&certs.join("server.pem")),
            server_key = qp(&certs.join("server-key.pem")),
            ca = qp(&certs.join("ca.pem")),
            hash_secret = qp(&d.join("hash-secret")),
            token_key = qp(&d.join("token-key.pem")),
            sigv4_secret = qp(&d.join("sigv4-secret")),
            jwks = q(&idp.jwks_url()),
            authz = q(&authz.url("/authorize")),
            slow = q(&slow.url("/authorize")),
            bad = q(&bad.url("/authorize")),
            down = q(&format!("http://{}/authorize", dead_addr())),
            alice_key = q(&hash(ALICE_KEY)),
            bob_key = q(&hash(BOB_KEY)),
            alice_secret = q(&hash(ALICE_SECRET)),
            bob_secret = q(&hash(BOB_SECRET)),
            up_url = q(&up.url()),
        );
        let gw = Gateway::start(BIN, &yaml).await?;
        let c = gw.client();
        Ok(Self {
            up,
            idp: Some(idp),
            rsa,
            ec,
            authz,
            _slow: slow,
            _bad: bad,
            gw,
            c,
            dir,
        })
    }

    fn url(&self, path: &str) -> String {
        self.gw.url(path)
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<reqwest::Response> {
        let mut r = self.c.get(self.url(path));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        Ok(r.send().await?)
    }

    /// GET with a bearer token.
    async fn bearer(&self, path: &str, token: &str) -> Result<reqwest::Response> {
        self.get(path, &[("authorization", &format!("Bearer {token}"))])
            .await
    }
}

/// Asserts 200 and returns the upstream's echo.
async fn echo_of(r: reqwest::Response) -> Result<Value> {
    let status = r.status();
    let text = r.text().await?;
    ensure!(status == 200, "expected 200, got {status}: {text}");
    Ok(serde_json::from_str(&text)?)
}

/// Asserts a problem document with `status` that mentions none of `secrets` in its body or
/// headers; returns the headers and the document.
async fn problem(r: reqwest::Response, status: u16, secrets: &[&str]) -> (HeaderMap, Value) {
    let st = r.status();
    let headers = r.headers().clone();
    let body = r.bytes().await.expect("problem body");
    let doc = assert_problem(st, &headers, &body, status);
    assert_no_leak(&headers, &body, secrets);
    // RFC 9110 §15.5.2: a 401 carries at least one challenge, each a scheme then its
    // parameters after a space (§11.2), never a comma straight after the scheme.
    if status == 401 {
        let ch = challenges(&headers);
        assert!(!ch.is_empty(), "a 401 without WWW-Authenticate: {doc}");
        for c in &ch {
            let scheme = c.split(' ').next().unwrap_or_default();
            assert!(
                !scheme.is_empty() && !scheme.contains(','),
                "malformed challenge {c:?}"
            );
        }
    }
    (headers, doc)
}

fn assert_no_leak(headers: &HeaderMap, body: &[u8], secrets: &[&str]) {
    let text = String::from_utf8_lossy(body);
    for s in secrets {
        assert!(
            !text.contains(s),
            "the response body echoes a credential: {text}"
        );
        for (k, v) in headers {
            assert!(
                !String::from_utf8_lossy(v.as_bytes()).contains(s),
                "header {k} echoes a credential: {v:?}"
            );
        }
    }
}

/// Neither the access log (stdout) nor the gateway's log (stderr) shows any of `secrets`.
fn assert_logs_clean(gw: &Gateway, secrets: &[&str]) {
    let (out, err) = (gw.stdout_text(), gw.stderr_text());
    for s in secrets {
        assert!(!out.contains(s), "the access log shows a credential");
        assert!(!err.contains(s), "the gateway log shows a credential");
    }
}

fn challenges(h: &HeaderMap) -> Vec<String> {
    h.get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. API keys

#[tokio::test]
async fn api_key_identifies_its_consumer_and_stays_at_the_gateway() -> Result<()> {
    let fx = Fx::start().await?;
    let echo = echo_of(
        fx.get(
            "/key/1",
            &[("x-api-key", ALICE_KEY), ("x-request-id", "id-key-1")],
        )
        .await?,
    )
    .await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("alice"), "{echo}");
    assert_eq!(
        echoed(&echo, "x-api-key"),
        None,
        "the key reached the upstream"
    );
    assert!(
        !echo.to_string().contains(ALICE_KEY),
        "the key reached the upstream: {echo}"
    );
    let line = fx
        .gw
        .wait_access_log(SHORT, |l| l["request_id"] == "id-key-1")
        .await?;
    assert_eq!(line["consumer"], "alice", "{line}");
    assert!(!line.to_string().contains(ALICE_KEY), "{line}");

    // Isolation: each key is its own consumer.
    let echo = echo_of(fx.get("/key/2", &[("x-api-key", BOB_KEY)]).await?).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("bob"));
    let echo = echo_of(fx.get("/either/3", &[("x-api-key", ALICE_KEY)]).await?).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("alice"));

    // Two keys, or two tokens: ambiguous, so neither is taken.
    let hits = fx.up.hits();
    problem(
        fx.get(
            "/key/1",
            &[("x-api-key", ALICE_KEY), ("x-api-key", BOB_KEY)],
        )
        .await?,
        401,
        &[ALICE_KEY, BOB_KEY],
    )
    .await;
    let token = fx.rsa.sign(&claims("alice", "accounts:read"));
    let auth = format!("Bearer {token}");
    problem(
        fx.get(
            "/either/1",
            &[("authorization", &auth), ("authorization", &auth)],
        )
        .await?,
        401,
        &[token.as_str()],
    )
    .await;
    assert_eq!(fx.up.hits(), hits);

    // An unknown key: 401 naming the ApiKey scheme, the key echoed nowhere.
    let bogus = "tg_bogus_not_a_real_key_424242";
    let (h, doc) = problem(
        fx.get("/key/1", &[("x-api-key", bogus)]).await?,
        401,
        &[bogus],
    )
    .await;
    let ch = challenges(&h);
    assert!(
        ch.iter().any(|c| c.starts_with("ApiKey")),
        "challenges: {ch:?}, {doc}"
    );

    // No credentials: one challenge per accepted scheme.
    let (h, _) = problem(fx.get("/either/1", &[]).await?, 401, &[]).await;
    let ch = challenges(&h);
    assert!(ch.iter().any(|c| c.starts_with("ApiKey")), "{ch:?}");
    assert!(ch.iter().any(|c| c.starts_with("Bearer")), "{ch:?}");
    let (h, _) = problem(fx.get("/key/1", &[]).await?, 401, &[]).await;
    assert!(challenges(&h).iter().any(|c| c.starts_with("ApiKey")));
    // A key in another header is no key.
    problem(
        fx.get(
            "/key/1",
            &[("authorization", &format!("Bearer {ALICE_KEY}"))],
        )
        .await?,
        401,
        &[ALICE_KEY],
    )
    .await;
    assert_logs_clean(&fx.gw, &[ALICE_KEY, BOB_KEY, bogus]);
    Ok(())
}

#[tokio::test]
async fn client_sent_identity_headers_never_reach_the_upstream() -> Result<()> {
    let fx = Fx::start().await?;
    let forged = [
        ("x-consumer-id", "mallory"),
        ("x-consumer-plan", "gold"),
        ("x-auth-foo", "bar"),
        ("x-auth-tier", "platinum"),
        ("x-client-cert-subject", "CN=ledger-reader"),
    ];
    let mut with_key = forged.to_vec();
    with_key.push(("x-api-key", ALICE_KEY));
    let echo = echo_of(fx.get("/key/1", &with_key).await?).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("alice"), "{echo}");
    for (name, _) in &forged[1..] {
        assert_eq!(echoed(&echo, name), None, "{name} passed: {echo}");
    }

    // A route without auth: none of them pass either, nor a partner's key sent along.
    let echo = echo_of(fx.get("/open/1", &with_key).await?).await?;
    for (name, _) in &with_key {
        assert_eq!(echoed(&echo, name), None, "{name} passed: {echo}");
    }
    // And a refused request does not reach the upstream at all.
    let hits = fx.up.hits();
    problem(fx.get("/key/1", &forged).await?, 401, &[]).await;
    assert_eq!(fx.up.hits(), hits);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. JWT

#[tokio::test]
async fn jwt_from_the_idp_identifies_sub_or_client_id() -> Result<()> {
    let fx = Fx::start().await?;
    for key in [&fx.rsa, &fx.ec] {
        let token = key.sign(&claims("alice", "accounts:read"));
        let echo = echo_of(fx.bearer("/jwt/1", &token).await?).await?;
        assert_eq!(
            echoed(&echo, "x-consumer-id"),
            Some("alice"),
            "{:?}",
            key.alg
        );
    }
    // `sub` names nobody, `client_id` names bob.
    let mut c = claims("svc-unknown", "accounts:read");
    c["client_id"] = json!("bob");
    let echo = echo_of(fx.bearer("/jwt/2", &fx.ec.sign(&c)).await?).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("bob"));
    // `aud` may be an array naming the audience among others.
    let mut c = claims("alice", "");
    c["aud"] = json!(["other-api", AUDIENCE]);
    let echo = echo_of(fx.bearer("/jwt/4", &fx.rsa.sign(&c)).await?).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("alice"));
    // An access token also works where either scheme is accepted.
    let token = fx.rsa.sign(&claims("bob", ""));
    let echo = echo_of(fx.bearer("/either/1", &token).await?).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("bob"));
    // Case-insensitive scheme name.
    let echo = echo_of(
        fx.get("/jwt/3", &[("authorization", &format!("bearer {token}"))])
            .await?,
    )
    .await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("bob"));
    Ok(())
}

#[tokio::test]
async fn bad_jwts_are_refused_with_invalid_token() -> Result<()> {
    let fx = Fx::start().await?;
    let now = now_secs();
    let good = claims("alice", "accounts:read payments:write");
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let ghost = SigningKey::new("ghost", Algorithm::ES256)?;
    let mut cases: Vec<(&str, String)> = vec![
        ("expired", fx.rsa.sign(&with("exp", json!(now - 600)))),
        (
            "nbf in the future",
            fx.rsa.sign(&with("nbf", json!(now + 600))),
        ),
        (
            "wrong audience",
            fx.ec.sign(&with("aud", json!("other-api"))),
        ),
        (
            "wrong issuer",
            fx.ec.sign(&with("iss", json!("https://evil.test"))),
        ),
        ("unknown kid", ghost.sign(&good)),
        (
            "unknown subject",
            fx.rsa.sign(&with("sub", json!("nobody"))),
        ),
        ("garbage", "not.a.jwt".to_string()),
    ];
    // Tampered payload: a valid token with its claims swapped for bob's.
    let valid = fx.rsa.sign(&good);
    let parts: Vec<&str> = valid.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&with("sub", json!("bob"))),
        parts[2]
    );
    cases.push(("tampered payload", tampered));
    // alg none, with and without a signature part.
    let none_header = json!({"alg": "none", "typ": "JWT", "kid": fx.rsa.kid});
    cases.push(("alg none", format!("{}.{}.", b64(&none_header), b64(&good))));
    cases.push((
        "alg none, the RSA signature kept",
        format!("{}.{}.{}", b64(&none_header), parts[1], parts[2]),
    ));
    // HS256 keyed with the RSA public key (the classic confusion attack).
    let public = fx.rsa.public_pem(fx.dir.path())?;
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(fx.rsa.kid.clone());
    let hs = jsonwebtoken::encode(&h, &good, &EncodingKey::from_secret(&public))?;
    cases.push(("HS256 with the RSA public key", hs));

    let mut failures = Vec::new();
    for (what, token) in &cases {
        let r = fx.bearer("/jwt/1", token).await?;
        if r.status() != 401 {
            failures.push(format!("{what}: {} {}", r.status(), r.text().await?));
            continue;
        }
        let (h, doc) = problem(r, 401, &[token.as_str()]).await;
        let ch = challenges(&h);
        let ok = ch
            .iter()
            .any(|c| c.starts_with("Bearer") && c.contains("error=\"invalid_token\""));
        if !ok {
            failures.push(format!("{what}: challenges {ch:?}, {doc}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(fx.up.hits(), 0, "a refused token reached the upstream");
    let tokens: Vec<&str> = cases.iter().map(|(_, t)| t.as_str()).collect();
    assert_logs_clean(&fx.gw, &tokens);

    // A flood of made-up kids does not hammer the IdP (min_refetch_interval is 1 s).
    let idp = fx.idp.as_ref().context("idp")?;
    let before = idp.fetches();
    let mut flood = Vec::new();
    for i in 0..20 {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(format!("made-up-{i}"));
        let t = jsonwebtoken::encode(&h, &good, &ghost.key)?;
        let (c, url) = (fx.c.clone(), fx.url("/jwt/f"));
        flood.push(tokio::spawn(async move {
            c.get(url).bearer_auth(t).send().await.map(|r| r.status())
        }));
    }
    for f in flood {
        assert_eq!(f.await??, 401);
    }
    let extra = idp.fetches() - before;
    assert!(extra <= 2, "{extra} JWKS fetches for 20 unknown kids");
    // The good token still works after all that.
    let echo = echo_of(fx.bearer("/jwt/1", &valid).await?).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("alice"));
    Ok(())
}

#[tokio::test]
async fn jwks_rotation_is_picked_up_on_first_use_and_an_idp_outage_keeps_known_keys() -> Result<()>
{
    let mut fx = Fx::start().await?;
    let idp = fx.idp.take().context("idp")?;
    // The first fetch happens at start.
    let first = eventually(SHORT, || async { (idp.fetches() >= 1).then_some(()) }).await;
    ensure!(first.is_some(), "the gateway never fetched the JWKS");
    let echo = echo_of(
        fx.bearer("/jwt/1", &fx.rsa.sign(&claims("alice", "")))
            .await?,
    )
    .await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("alice"));
    let before = idp.fetches();

    // The IdP rotates to a new key: the first token signed with it works.
    let rotated = SigningKey::new("rsa-2", Algorithm::RS256)?;
    idp.serve(&[&rotated, &fx.ec]);
    let token = rotated.sign(&claims("bob", ""));
    let echo = echo_of(fx.bearer("/jwt/2", &token).await?).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("bob"));
    let after = idp.fetches();
    assert!(after > before, "no refetch for the new kid");
    assert!(
        after - before <= 2,
        "{} fetches for one new kid",
        after - before
    );

    // The IdP breaks (503): once the gateway has tried and failed to refetch, the keys it
    // already has keep working for freshly signed tokens.
    idp.fail();
    let ghost = SigningKey::new("ghost", Algorithm::ES256)?;
    let failed = eventually(Duration::from_secs(5), || {
        let (fx, idp, ghost) = (&fx, &idp, &ghost);
        async move {
            let t = ghost.sign(&claims("alice", ""));
            let r = fx.bearer("/jwt/9", &t).await.ok()?;
            assert_eq!(r.status(), 401, "a token signed by an unknown key");
            (idp.fetches() > after).then_some(())
        }
    })
    .await;
    ensure!(failed.is_some(), "the gateway never retried the JWKS fetch");
    for (i, key) in [&rotated, &fx.ec].into_iter().enumerate() {
        let t = key.sign(&claims("alice", ""));
        let echo = echo_of(fx.bearer(&format!("/jwt/b{i}"), &t).await?).await?;
        assert_eq!(echoed(&echo, "x-consumer-id"), Some("alice"));
    }
    // A reload while the IdP is broken (as any admin change, it compiles a new snapshot)
    // keeps the keys: the issuers are configured as before, so their verifier carries over.
    let r = fx.gw.admin_reload().await?;
    ensure!(r.status().is_success(), "reload: {}", r.status());
    for (i, key) in [&rotated, &fx.ec].into_iter().enumerate() {
        let t = key.sign(&claims("bob", ""));
        let echo = echo_of(fx.bearer(&format!("/jwt/r{i}"), &t).await?).await?;
        assert_eq!(echoed(&echo, "x-consumer-id"), Some("bob"));
    }

    // The IdP goes away altogether (connection refused): same.
    let addr = idp.mock.addr;
    drop(idp);
    let down = eventually(SHORT, || async {
        std::net::TcpStream::connect(addr).is_err().then_some(())
    })
    .await;
    ensure!(down.is_some(), "the IdP did not stop");
    let t = ghost.sign(&claims("alice", ""));
    let started = Instant::now();
    problem(fx.bearer("/jwt/8", &t).await?, 401, &[t.as_str()]).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    for (i, key) in [&rotated, &fx.ec].into_iter().enumerate() {
        let t = key.sign(&claims("bob", ""));
        let echo = echo_of(fx.bearer(&format!("/jwt/c{i}"), &t).await?).await?;
        assert_eq!(echoed(&echo, "x-consumer-id"), Some("bob"));
    }
    // The old key was rotated out: a new token signed with it is refused.
    let t = fx.rsa.sign(&claims("alice", ""));
    problem(fx.bearer("/jwt/7", &t).await?, 401, &[t.as_str()]).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. `any`, `all` and scopes

#[tokio::test]
async fn all_needs_every_scheme_naming_one_consumer_and_scopes_are_enforced() -> Result<()> {
    let fx = Fx::start().await?;
    let alice_token = fx.rsa.sign(&claims("alice", "accounts:read"));
    let bob_token = fx.ec.sign(&claims("bob", "accounts:read"));

    // any: either one will do.
    let echo = echo_of(fx.get("/either/1", &[("x-api-key", BOB_KEY)]).await?).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("bob"));
    let echo = echo_of(fx.bearer("/either/2", &alice_token).await?).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("alice"));

    // all: both, for the same consumer.
    let auth = format!("Bearer {alice_token}");
    let echo = echo_of(
        fx.get(
            "/both/1",
            &[("x-api-key", ALICE_KEY), ("authorization", &auth)],
        )
        .await?,
    )
    .await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("alice"));
    assert_eq!(echoed(&echo, "x-api-key"), None);
    let secrets = [ALICE_KEY, BOB_KEY, alice_token.as_str(), bob_token.as_str()];
    problem(
        fx.get("/both/2", &[("x-api-key", ALICE_KEY)]).await?,
        401,
        &secrets,
    )
    .await;
    problem(fx.bearer("/both/3", &alice_token).await?, 401, &secrets).await;
    let hits = fx.up.hits();
    // Alice's key with Bob's token (and the other way round): refused.
    let bob_auth = format!("Bearer {bob_token}");
    problem(
        fx.get(
            "/both/4",
            &[("x-api-key", ALICE_KEY), ("authorization", &bob_auth)],
        )
        .await?,
        401,
        &secrets,
    )
    .await;
    problem(
        fx.get(
            "/both/5",
            &[("x-api-key", BOB_KEY), ("authorization", &auth)],
        )
        .await?,
        401,
        &secrets,
    )
    .await;
    // A good key with a bad token is still refused.
    let expired = {
        let mut c = claims("alice", "");
        c["exp"] = json!(now_secs() - 3600);
        fx.rsa.sign(&c)
    };
    problem(
        fx.get(
            "/both/6",
            &[
                ("x-api-key", ALICE_KEY),
                ("authorization", &format!("Bearer {expired}")),
            ],
        )
        .await?,
        401,
        &[ALICE_KEY, expired.as_str()],
    )
    .await;
    assert_eq!(fx.up.hits(), hits, "a refused request reached the upstream");

    // Scopes come from the token: without payments:write → 403 insufficient_scope.
    let (h, doc) = problem(fx.bearer("/pay/1", &alice_token).await?, 403, &secrets).await;
    let ch = challenges(&h);
    assert!(
        ch.iter().any(|c| c.starts_with("Bearer")
            && c.contains("error=\"insufficient_scope\"")
            && c.contains("payments:write")),
        "challenges {ch:?}, {doc}"
    );
    let writer = fx
        .rsa
        .sign(&claims("alice", "accounts:read payments:write"));
    let echo = echo_of(fx.bearer("/pay/2", &writer).await?).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("alice"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. The OAuth2 token endpoint and the gateway's JWK Set

async fn token_request(
    fx: &Fx,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> Result<reqwest::Response> {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut r =
        fx.c.post(fx.url("/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
    if let Some((id, secret)) = basic {
        r = r.header(
            "authorization",
            format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))),
        );
    }
    Ok(r.send().await?)
}

/// Asserts an RFC 6749 §5.2 error with `status` and `code`; returns the headers.
async fn oauth_error(r: reqwest::Response, status: u16, code: &str) -> Result<HeaderMap> {
    let st = r.status();
    let h = r.headers().clone();
    let body = r.bytes().await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    ensure!(st == status, "expected {status}, got {st}: {text}");
    let doc: Value = serde_json::from_slice(&body).with_context(|| text.clone())?;
    ensure!(doc["error"] == code, "expected error {code}: {text}");
    assert_no_leak(&h, &body, &[ALICE_SECRET, BOB_SECRET, "wrong-secret-123"]);
    // Every 401 names a scheme to authenticate with (RFC 9110 §15.5.2), here Basic.
    if status == 401 {
        let ch = challenges(&h);
        ensure!(ch.iter().any(|c| c.starts_with("Basic")), "{ch:?}");
    }
    Ok(h)
}

#[tokio::test]
async fn token_endpoint_issues_tokens_that_the_gateway_accepts() -> Result<()> {
    let fx = Fx::start().await?;
    let cc = ("grant_type", "client_credentials");

    // Basic client authentication.
    let r = token_request(&fx, Some(("alice", ALICE_SECRET)), &[cc]).await?;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let doc: Value = r.json().await?;
    assert_eq!(doc["token_type"], "Bearer", "{doc}");
    let ttl = doc["expires_in"].as_u64().context("expires_in")?;
    assert!(ttl > 0 && ttl <= 900, "{doc}");
    let scope = doc["scope"].as_str().context("scope")?;
    let mut got: Vec<&str> = scope.split(' ').collect();
    got.sort_unstable();
    assert_eq!(got, ["accounts:read", "payments:write"], "{doc}");
    let token = doc["access_token"]
        .as_str()
        .context("access_token")?
        .to_string();

    // It works on JWT routes, including the scoped one.
    let echo = echo_of(fx.bearer("/jwt/1", &token).await?).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("alice"));
    echo_of(fx.bearer("/pay/1", &token).await?).await?;

    // The published JWK Set verifies it.
    let r = fx.c.get(fx.url("/.well-known/jwks.json")).send().await?;
    assert_eq!(r.status(), 200);
    let set: JwkSet = r.json().await?;
    let header = jsonwebtoken::decode_header(&token)?;
    let kid = header.kid.context("kid in the issued token")?;
    let jwk = set
        .find(&kid)
        .context("the token's kid is in the JWK Set")?;
    let mut v = Validation::new(header.alg);
    v.set_audience(&[AUDIENCE]);
    v.set_issuer(&[GW_ISSUER]);
    let data = jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_jwk(jwk)?, &v)?;
    assert_eq!(data.claims["sub"], "alice");
    let exp = data.claims["exp"].as_u64().context("exp")?;
    assert!(exp <= now_secs() + 900 + 5, "{:?}", data.claims);

    // Form client authentication, a narrower scope.
    let r = token_request(
        &fx,
        None,
        &[
            cc,
            ("client_id", "bob"),
            ("client_secret", BOB_SECRET),
            ("scope", "accounts:read"),
        ],
    )
    .await?;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await?;
    assert_eq!(doc["scope"], "accounts:read");
    let bob_token = doc["access_token"].as_str().context("access_token")?;
    let echo = echo_of(fx.bearer("/jwt/2", bob_token).await?).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("bob"));
    // Bob's token lacks payments:write.
    problem(fx.bearer("/pay/2", bob_token).await?, 403, &[bob_token]).await;
    Ok(())
}

#[tokio::test]
async fn token_endpoint_errors_follow_rfc6749() -> Result<()> {
    let fx = Fx::start().await?;
    let cc = ("grant_type", "client_credentials");
    let bad = "wrong-secret-123";

    let h = oauth_error(
        token_request(&fx, Some(("alice", bad)), &[cc]).await?,
        401,
        "invalid_client",
    )
    .await?;
    let ch = challenges(&h);
    assert!(ch.iter().any(|c| c.starts_with("Basic")), "{ch:?}");
    oauth_error(
        token_request(
            &fx,
            None,
            &[cc, ("client_id", "alice"), ("client_secret", bad)],
        )
        .await?,
        401,
        "invalid_client",
    )
    .await?;
    // Someone else's secret, an unknown client.
    oauth_error(
        token_request(&fx, Some(("alice", BOB_SECRET)), &[cc]).await?,
        401,
        "invalid_client",
    )
    .await?;
    oauth_error(
        token_request(&fx, Some(("mallory", ALICE_SECRET)), &[cc]).await?,
        401,
        "invalid_client",
    )
    .await?;
    oauth_error(
        token_request(
            &fx,
            Some(("alice", ALICE_SECRET)),
            &[("grant_type", "password")],
        )
        .await?,
        400,
        "unsupported_grant_type",
    )
    .await?;
    // A parameter without a value counts as not sent (RFC 6749 §3.1).
    oauth_error(
        token_request(&fx, Some(("alice", ALICE_SECRET)), &[("grant_type", "")]).await?,
        400,
        "invalid_request",
    )
    .await?;
    let r = token_request(&fx, Some(("alice", ALICE_SECRET)), &[cc, ("scope", "")]).await?;
    assert_eq!(r.status(), 200, "an empty scope is no scope: all granted");
    oauth_error(
        token_request(
            &fx,
            Some(("bob", BOB_SECRET)),
            &[cc, ("scope", "accounts:read payments:write")],
        )
        .await?,
        400,
        "invalid_scope",
    )
    .await?;
    oauth_error(
        token_request(
            &fx,
            Some(("alice", ALICE_SECRET)),
            &[cc, ("client_id", "alice"), ("client_secret", ALICE_SECRET)],
        )
        .await?,
        400,
        "invalid_request",
    )
    .await?;
    // A body that cannot be read is the client's error in the same form, not a size problem.
    let addr = fx.gw.public_addr();
    let req = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\ngrant_type\r\n0\r\n\r\n"
    );
    let r = tollgate_testkit::raw::raw_request(addr, req.as_bytes(), SHORT).await?;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()?["error"], "invalid_request");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. mTLS

fn client_identity(cert: &Path, key: &Path) -> Result<reqwest::Identity> {
    let mut pem = std::fs::read(cert)?;
    pem.extend_from_slice(b"\n");
    pem.extend(std::fs::read(key)?);
    Ok(reqwest::Identity::from_pem(&pem)?)
}

/// A CA of our own and a client certificate from it with CN `ledger-reader`.
fn rogue_client(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let p = |n: &str| dir.join(n).display().to_string();
    std::fs::write(dir.join("rogue-ca-key.pem"), ec_key_pem()?)?;
    std::fs::write(dir.join("rogue-key.pem"), ec_key_pem()?)?;
    std::fs::write(
        dir.join("rogue.ext"),
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    )?;
    let (ca_key, ca, key, csr, ext, cert) = (
        p("rogue-ca-key.pem"),
        p("rogue-ca.pem"),
        p("rogue-key.pem"),
        p("rogue.csr"),
        p("rogue.ext"),
        p("rogue.pem"),
    );
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &ca_key,
        "-sha256",
        "-days",
        "2",
        "-subj",
        "/CN=Rogue CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        &ca,
    ])?;
    openssl(&[
        "req",
        "-new",
        "-key",
        &key,
        "-subj",
        "/O=Tollgate Demo/CN=ledger-reader",
        "-out",
        &csr,
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-sha256",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ])?;
    Ok((dir.join("rogue.pem"), dir.join("rogue-key.pem")))
}

#[tokio::test]
async fn mtls_admits_only_listed_certificates_from_the_ca() -> Result<()> {
    let fx = Fx::start().await?;
    let certs = bank_certs_dir();
    let ca = certs.join("ca.pem");
    let url = fx.gw.tls_url("localhost", "/ledger/2026");

    let reader = fx
        .gw
        .tls_client_builder(&ca, &[])?
        .identity(client_identity(
            &certs.join("ledger-reader.pem"),
            &certs.join("ledger-reader-key.pem"),
        )?)
        .build()?;
    let r = reader
        .get(&url)
        .header("x-client-cert-subject", "CN=forged")
        .send()
        .await?;
    let echo = echo_of(r).await?;
    let subject = echoed(&echo, "x-client-cert-subject").context("subject header")?;
    // RFC 4514, as `openssl x509 -nameopt RFC2253` prints it.
    assert_eq!(subject, "CN=ledger-reader,O=Tollgate Demo");
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("ledger-reader"));

    let other = fx
        .gw
        .tls_client_builder(&ca, &[])?
        .identity(client_identity(
            &certs.join("other-client.pem"),
            &certs.join("other-client-key.pem"),
        )?)
        .build()?;
    problem(other.get(&url).send().await?, 403, &[]).await;

    let anonymous = fx.gw.tls_client(&ca)?;
    let (h, _) = problem(anonymous.get(&url).send().await?, 401, &[]).await;
    assert!(!challenges(&h).is_empty());

    // A certificate with the right name from another CA never gets in.
    let (cert, key) = rogue_client(fx.dir.path())?;
    let rogue = fx
        .gw
        .tls_client_builder(&ca, &[])?
        .identity(client_identity(&cert, &key)?)
        .build()?;
    // Either the handshake is refused (an error here) or the request is.
    if let Ok(r) = rogue.get(&url).send().await {
        let status = r.status();
        assert!(
            status == 401 || status == 403,
            "a certificate from another CA got {status}: {}",
            r.text().await?
        );
    }

    // The route does not exist on the plain listener.
    let r = fx.get("/ledger/2026", &[]).await?;
    assert_eq!(r.status(), 404);
    assert_eq!(fx.up.hits(), 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. SigV4

fn sigv4_headers(url: &str, secret: &str, at: SystemTime) -> Result<Vec<(String, String)>> {
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;
    use aws_smithy_runtime_api::client::identity::Identity;

    let identity: Identity = Credentials::new(AKID, secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("bank-1")
        .name("execute-api")
        .time(at)
        .settings(SigningSettings::default())
        .build()?
        .into();
    let signable = SignableRequest::new("GET", url, std::iter::empty(), SignableBody::Bytes(&[]))?;
    let (instructions, _) = sign(signable, &params)?.into_parts();
    let mut req = http::Request::get(url).body(())?;
    instructions.apply_to_request_http1x(&mut req);
    Ok(req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect())
}

async fn send_signed(
    fx: &Fx,
    url: &str,
    headers: &[(String, String)],
) -> Result<reqwest::Response> {
    let mut r = fx.c.get(url);
    for (k, v) in headers {
        r = r.header(k, v);
    }
    Ok(r.send().await?)
}

#[tokio::test]
async fn sigv4_signed_requests_are_svc_reporting() -> Result<()> {
    let fx = Fx::start().await?;
    let url = fx.url("/reports/2026-q3");
    let now = SystemTime::now();

    let h = sigv4_headers(&url, SIGV4_SECRET, now)?;
    let echo = echo_of(send_signed(&fx, &url, &h).await?).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("svc-reporting"));

    let wrong = sigv4_headers(&url, "not-the-secret-0123456789abcdef", now)?;
    let (hd, _) = problem(send_signed(&fx, &url, &wrong).await?, 401, &[SIGV4_SECRET]).await;
    assert!(
        challenges(&hd)
            .iter()
            .any(|c| c.starts_with("AWS4-HMAC-SHA256")),
        "{:?}",
        challenges(&hd)
    );
    let old = sigv4_headers(&url, SIGV4_SECRET, now - Duration::from_secs(360))?;
    problem(send_signed(&fx, &url, &old).await?, 401, &[SIGV4_SECRET]).await;
    let future = sigv4_headers(&url, SIGV4_SECRET, now + Duration::from_secs(360))?;
    problem(send_signed(&fx, &url, &future).await?, 401, &[SIGV4_SECRET]).await;
    // Signed for one path, sent to another.
    let other = fx.url("/reports/2026-q4");
    problem(send_signed(&fx, &other, &h).await?, 401, &[SIGV4_SECRET]).await;
    // No signature at all.
    problem(fx.get("/reports/2026-q3", &[]).await?, 401, &[]).await;
    assert_eq!(fx.up.hits(), 1);

    // Over h2c the authority stands in for Host.
    let h2 = fx.gw.h2c_client();
    let mut r = h2.get(&url);
    for (k, v) in &sigv4_headers(&url, SIGV4_SECRET, SystemTime::now())? {
        r = r.header(k, v);
    }
    let r = r.send().await?;
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let echo = echo_of(r).await?;
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("svc-reporting"));
    assert_logs_clean(&fx.gw, &[SIGV4_SECRET]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. External authorizer

#[tokio::test]
async fn external_authorizer_decides_caches_and_fails_closed() -> Result<()> {
    let fx = Fx::start().await?;
    let allow = "Bearer allow-statements-7f3a";
    let echo = echo_of(
        fx.get(
            "/stmt/1",
            &[("authorization", allow), ("x-auth-tier", "platinum")],
        )
        .await?,
    )
    .await?;
    assert_eq!(echoed(&echo, "x-auth-tier"), Some("gold"), "{echo}");
    assert_eq!(echoed(&echo, "x-consumer-id"), Some("stmt-user"));
    assert_eq!(fx.authz.hits(), 1);
    let asked = fx.authz.last_body().context("authorizer request body")?;
    assert_eq!(asked["method"], "GET", "{asked}");
    assert_eq!(asked["path"], "/stmt/1", "{asked}");
    assert_eq!(asked["client_ip"], "127.0.0.1", "{asked}");
    assert_eq!(asked["headers"]["authorization"], allow, "{asked}");

    // The same credential again within the TTL: answered from the cache.
    let echo = echo_of(fx.get("/stmt/1", &[("authorization", allow)]).await?).await?;
    assert_eq!(echoed(&echo, "x-auth-tier"), Some("gold"));
    assert_eq!(fx.authz.hits(), 1, "the decision was not cached");

    // Deny → 403, the credential echoed nowhere.
    // Another credential is another question.
    let other = "Bearer allow-someone-else";
    echo_of(fx.get("/stmt/1", &[("authorization", other)]).await?).await?;
    assert_eq!(fx.authz.hits(), 2);

    let deny = "Bearer deny-me-0b1c2d";
    let hits = fx.up.hits();
    problem(
        fx.get("/stmt/2", &[("authorization", deny)]).await?,
        403,
        &[deny],
    )
    .await;
    assert_eq!(fx.up.hits(), hits);
    // Denials are decisions too: cached.
    problem(
        fx.get("/stmt/2", &[("authorization", deny)]).await?,
        403,
        &[deny],
    )
    .await;
    assert_eq!(fx.authz.hits(), 3, "the denial was not cached");

    // Down, slow, malformed: 503, and fast.
    let started = Instant::now();
    problem(
        fx.get("/stmt-down/1", &[("authorization", allow)]).await?,
        503,
        &[allow],
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    problem(
        fx.get("/stmt-slow/1", &[("authorization", allow)]).await?,
        503,
        &[allow],
    )
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(900),
        "slow authorizer took {took:?}"
    );
    problem(
        fx.get("/stmt-bad/1", &[("authorization", allow)]).await?,
        503,
        &[allow],
    )
    .await;
    assert_eq!(fx.up.hits(), hits);
    assert_logs_clean(&fx.gw, &[allow, deny]);
    // Each failure's cause is in the error log, so the three can be told apart. The log is
    // written by its own thread: the last line may follow its response by a moment.
    let causes = || -> Vec<String> {
        fx.gw
            .stderr_json()
            .iter()
            .filter(|l| l["message"] == "request failed" && l["kind"] == "service-unavailable")
            .map(|l| l["cause"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let _ = eventually(SHORT, || async { (causes().len() >= 3).then_some(()) }).await;
    let causes = causes();
    assert_eq!(causes.len(), 3, "{causes:?}");
    assert!(
        causes.iter().all(|c| c.starts_with("external authorizer")),
        "{causes:?}"
    );
    Ok(())
}
