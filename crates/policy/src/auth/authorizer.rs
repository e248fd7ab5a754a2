//! External authorizer (the Lambda-authorizer pattern): the gateway asks an HTTP service whether
//! a request may pass, and as whom.
//!
//! The gateway POSTs `{"method", "path", "headers": {lower-case name: value}, "client_ip"}` to
//! the configured URL and waits at most the configured timeout. A 200 answer
//! `{"allow": true, "consumer": ID, "context": {k: v}}` admits the request as that consumer, with
//! each context entry becoming an `x-auth-k` header for the backend; `{"allow": false}` refuses
//! it. Anything else (no connection, too slow, non-200, malformed answer) is an error, and the
//! caller fails closed.
//!
//! Decisions are cached per `Authorization` value for the configured TTL, so, as with API
//! Gateway's identity-source caching, a decision is taken to depend on the credential alone:
//! the authorizer sees the method and path of the first request only. The cache key is a SHA-256
//! of the credential, so the process never holds bearer credentials as map keys. Concurrent
//! misses for one credential share one authorizer call.
//!
//! Nothing here logs or displays a credential or a context value.

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use http::uri::Scheme;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tollgate_core::Clock;

/// Context entries beyond this are dropped: each becomes a header on every proxied request.
pub const MAX_CONTEXT_ENTRIES: usize = 32;
/// Longer context values are dropped rather than truncated, since a cut value could mean
/// something else to the backend.
pub const MAX_CONTEXT_VALUE_LEN: usize = 1024;
/// Bound on all context headers together (names and values), so that a cached decision and the
/// header section it adds stay small even at the per-entry limits.
pub const MAX_CONTEXT_TOTAL_BYTES: usize = 8 * 1024;
/// Context key length (before the `x-auth-` prefix).
pub const MAX_CONTEXT_KEY_LEN: usize = 64;
/// Consumer ids travel in a header and into logs and metrics; longer is not an id.
pub const MAX_CONSUMER_LEN: usize = 256;
/// A decision is a few hundred bytes; a bigger answer is broken or hostile.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;
pub const CONTEXT_HEADER_PREFIX: &str = "x-auth-";

const CACHE_SHARDS: usize = 16;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const POOL_MAX_IDLE_PER_HOST: usize = 32;

type HttpClient = Client<HttpConnector, Full<Bytes>>;
type CacheKey = [u8; 32];
type Outcome = Result<Arc<Decision>, AuthzError>;

/// What the authorizer is shown of one request.
#[derive(Debug, Clone, Copy)]
pub struct AuthzRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    /// The `Authorization` header value; `None` means the decision is not cached.
    pub cache_key: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        consumer: Arc<str>,
        /// `x-auth-<key>` headers for the backend, already validated.
        context_headers: Vec<(HeaderName, HeaderValue)>,
    },
    Deny,
}

/// Why no decision was had. The reason is for logs: it never holds request data or
/// credentials, and the whole error maps to a 503 for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    /// No usable answer: connect or I/O failure, timeout, non-200 status.
    #[error("external authorizer unavailable: {0}")]
    Unavailable(Arc<str>),
    /// A 200 answer that does not follow the contract.
    #[error("external authorizer answer malformed: {0}")]
    Malformed(Arc<str>),
}

impl AuthzError {
    pub fn reason(&self) -> &str {
        match self {
            Self::Unavailable(r) | Self::Malformed(r) => r,
        }
    }

    fn unavailable(reason: impl Into<Arc<str>>) -> Self {
        Self::Unavailable(reason.into())
    }

    fn malformed(reason: impl Into<Arc<str>>) -> Self {
        Self::Malformed(reason.into())
    }
}

/// The URL itself is never echoed: its query could carry a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizerConfigError {
    #[error("authorizer url is not a valid URL: {0}")]
    InvalidUrl(String),
    #[error("authorizer url must use http://")]
    NotHttp,
    #[error("authorizer url has no host")]
    NoHost,
    #[error("authorizer url must not contain credentials (user:password@)")]
    UserInfo,
    #[error("authorizer timeout must be greater than zero")]
    ZeroTimeout,
}

/// Client for one external authorizer, with its decision cache. Cheap to share behind an `Arc`.
pub struct Authorizer {
    inner: Arc<Inner>,
}

struct Inner {
    uri: Uri,
    timeout: Duration,
    cache_ttl: Duration,
    clock: Arc<dyn Clock>,
    client: HttpClient,
    cache: DecisionCache,
    /// Calls in progress per credential; the spawned call publishes its outcome on the channel.
    inflight: Mutex<HashMap<CacheKey, watch::Receiver<Option<Outcome>>>>,
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let authority = self.inner.uri.authority().map_or("", |a| a.as_str());
        f.debug_struct("Authorizer")
            .field("authority", &authority)
            .field("path", &self.inner.uri.path())
            .field("timeout", &self.inner.timeout)
            .field("cache_ttl", &self.inner.cache_ttl)
            .finish_non_exhaustive()
    }
}

impl Authorizer {
    /// A `cache_ttl` of zero disables the cache; concurrent identical requests still share a call.
    pub fn new(
        url: &str,
        timeout: Duration,
        cache_ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuthorizerConfigError> {
        Self::with_cache_capacity(url, timeout, cache_ttl, DEFAULT_CACHE_CAPACITY, clock)
    }

    pub fn with_cache_capacity(
        url: &str,
        timeout: Duration,
        cache_ttl: Duration,
        cache_capacity: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuthorizerConfigError> {
        let uri = parse_url(url)?;
        if timeout.is_zero() {
            return Err(AuthorizerConfigError::ZeroTimeout);
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .build(connector);
        let capacity = if cache_ttl.is_zero() {
            0
        } else {
            cache_capacity
        };
        Ok(Self {
            inner: Arc::new(Inner {
                uri,
                timeout,
                cache_ttl,
                clock,
                client,
                cache: DecisionCache::new(capacity, cache_ttl),
                inflight: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Allow or deny, from the cache or the authorizer. Errors are never cached; callers fail
    /// closed on them.
    pub async fn decide(&self, req: &AuthzRequest<'_>) -> Result<Arc<Decision>, AuthzError> {
        let inner = &self.inner;
        let Some(credential) = req.cache_key else {
            return inner.call(encode_request(req)?).await;
        };
        let key: CacheKey = Sha256::digest(credential.as_bytes()).into();
        if let Some(hit) = inner.cache.get(&key, inner.clock.now()) {
            return Ok(hit);
        }

        let (mut rx, lead) = {
            let mut flights = lock(&inner.inflight);
            // The call that just finished fills the cache before leaving `inflight`, so looking
            // again under the lock keeps a request arriving in between from calling twice.
            if let Some(hit) = inner.cache.get(&key, inner.clock.now()) {
                return Ok(hit);
            }
            match flights.get(&key) {
                Some(rx) => (rx.clone(), None),
                None => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(key, rx.clone());
                    (rx, Some(tx))
                }
            }
        };

        if let Some(tx) = lead {
            let flight = Flight {
                inner: Arc::clone(inner),
                key,
                tx,
            };
            match encode_request(req) {
                Ok(body) => {
                    // A task of its own, so a caller that goes away (client disconnect) does not
                    // cancel the call that the other callers are waiting on.
                    tokio::spawn(flight.run(body));
                }
                Err(e) => flight.finish(Err(e)),
            }
        }

        match rx.wait_for(Option::is_some).await {
            Ok(outcome) => (*outcome)
                .clone()
                .unwrap_or_else(|| Err(AuthzError::unavailable("authorizer call abandoned"))),
            Err(_) => Err(AuthzError::unavailable("authorizer call abandoned")),
        }
    }
}

/// One shared authorizer call. Dropping it (done, or aborted at runtime shutdown) clears the
/// in-flight entry, so a later miss starts afresh instead of waiting on a dead channel.
struct Flight {
    inner: Arc<Inner>,
    key: CacheKey,
    tx: watch::Sender<Option<Outcome>>,
}

impl Flight {
    async fn run(self, body: Bytes) {
        let outcome = self.inner.call(body).await;
        if let Ok(decision) = &outcome {
            self.inner
                .cache
                .insert(self.key, Arc::clone(decision), self.inner.clock.now());
        }
        self.finish(outcome);
    }

    fn finish(self, outcome: Outcome) {
        self.tx.send_replace(Some(outcome));
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        lock(&self.inner.inflight).remove(&self.key);
    }
}

impl Inner {
    async fn call(&self, body: Bytes) -> Outcome {
        let req = Request::post(self.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body))
            .map_err(|e| AuthzError::unavailable(format!("building the request: {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| AuthzError::unavailable(error_chain(&e)))?;
            if resp.status() != StatusCode::OK {
                return Err(AuthzError::unavailable(format!(
                    "answered {}",
                    resp.status().as_u16()
                )));
            }
            let declared = resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
                return Err(too_large());
            }
            Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        too_large()
                    } else {
                        AuthzError::unavailable(format!("reading the answer: {}", error_chain(&*e)))
                    }
                })
        };
        let body = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                AuthzError::unavailable(format!("no answer within {:?}", self.timeout))
            })??;
        parse_answer(&body).map(Arc::new)
    }
}

fn too_large() -> AuthzError {
    AuthzError::malformed(format!("answer larger than {MAX_RESPONSE_BYTES} bytes"))
}

fn parse_url(url: &str) -> Result<Uri, AuthorizerConfigError> {
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| AuthorizerConfigError::InvalidUrl(e.to_string()))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(AuthorizerConfigError::NotHttp);
    }
    let Some(authority) = uri.authority() else {
        return Err(AuthorizerConfigError::NoHost);
    };
    if authority.as_str().contains('@') {
        return Err(AuthorizerConfigError::UserInfo);
    }
    if authority.host().is_empty() {
        return Err(AuthorizerConfigError::NoHost);
    }
    Ok(uri)
}

/// Display of an error and its sources: hyper's outer error alone ("client error (Connect)")
/// does not say what went wrong.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a single map operation, so a panic elsewhere cannot leave
    // the map half-changed; poisoning carries no information.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Serialize)]
struct Outgoing<'a> {
    method: &'a str,
    path: &'a str,
    headers: BTreeMap<&'a str, Cow<'a, str>>,
    client_ip: IpAddr,
}

fn encode_request(req: &AuthzRequest<'_>) -> Result<Bytes, AuthzError> {
    let mut headers = BTreeMap::new();
    for name in req.headers.keys() {
        // `HeaderValue::to_str` refuses all non-ASCII; UTF-8 is what JSON can carry faithfully.
        let mut values = req
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok());
        let Some(first) = values.next() else { continue };
        let mut joined = Cow::Borrowed(first);
        for more in values {
            let j = joined.to_mut();
            j.push_str(", ");
            j.push_str(more);
        }
        headers.insert(name.as_str(), joined);
    }
    let out = Outgoing {
        method: req.method,
        path: req.path,
        headers,
        client_ip: req.client_ip,
    };
    serde_json::to_vec(&out)
        .map(Bytes::from)
        .map_err(|_| AuthzError::unavailable("encoding the request failed"))
}

/// `consumer` and `context` are left untyped so that a deny answer with odd extras is still a
/// deny; they are checked only when the answer allows.
#[derive(Deserialize)]
struct Answer {
    allow: bool,
    #[serde(default)]
    consumer: Option<Value>,
    #[serde(default)]
    context: Option<Value>,
}

fn parse_answer(body: &[u8]) -> Result<Decision, AuthzError> {
    // serde's messages quote the offending input, which could be anything the authorizer said;
    // the category and position are enough to find it.
    let answer: Answer = serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "not an object with a boolean `allow`",
            serde_json::error::Category::Eof => "truncated JSON",
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => "invalid JSON",
        };
        AuthzError::malformed(format!("{what} (line {} column {})", e.line(), e.column()))
    })?;
    if !answer.allow {
        return Ok(Decision::Deny);
    }
    let consumer = match answer.consumer {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => {
            return Err(AuthzError::malformed("allow without `consumer`"));
        }
        Some(_) => return Err(AuthzError::malformed("`consumer` is not a string")),
    };
    if consumer.trim().is_empty() {
        return Err(AuthzError::malformed("`consumer` is empty"));
    }
    if consumer.len() > MAX_CONSUMER_LEN {
        return Err(AuthzError::malformed(format!(
            "`consumer` longer than {MAX_CONSUMER_LEN} bytes"
        )));
    }
    // The consumer id is sent upstream as a header; refusing it here beats a failure later.
    if HeaderValue::from_str(&consumer).is_err() {
        return Err(AuthzError::malformed(
            "`consumer` is not a valid header value",
        ));
    }
    Ok(Decision::Allow {
        consumer: consumer.into(),
        context_headers: context_headers(answer.context.as_ref())?,
    })
}

fn context_headers(context: Option<&Value>) -> Result<Vec<(HeaderName, HeaderValue)>, AuthzError> {
    let map = match context {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(AuthzError::malformed("`context` is not an object")),
    };
    let mut out: Vec<(HeaderName, HeaderValue)> =
        Vec::with_capacity(map.len().min(MAX_CONTEXT_ENTRIES));
    let mut total = 0usize;
    for (i, (key, value)) in map.iter().enumerate() {
        if out.len() == MAX_CONTEXT_ENTRIES {
            tracing::debug!(
                dropped = map.len() - i,
                limit = MAX_CONTEXT_ENTRIES,
                "authorizer context has too many entries; dropping the rest"
            );
            break;
        }
        let (name, value) = match context_header(key, value) {
            Ok(header) => header,
            Err(why) => {
                tracing::debug!(key = %shown_key(key), why, "skipping authorizer context entry");
                continue;
            }
        };
        if out.iter().any(|(seen, _)| *seen == name) {
            // Keys differing only in case land on one header; two values would be ambiguous.
            tracing::debug!(key = %shown_key(key), "skipping duplicate authorizer context entry");
            continue;
        }
        let size = name.as_str().len() + value.len();
        if total + size > MAX_CONTEXT_TOTAL_BYTES {
            tracing::debug!(key = %shown_key(key), "authorizer context too large; skipping entry");
            continue;
        }
        total += size;
        out.push((name, value));
    }
    Ok(out)
}

fn context_header(key: &str, value: &Value) -> Result<(HeaderName, HeaderValue), &'static str> {
    if key.is_empty() || key.len() > MAX_CONTEXT_KEY_LEN {
        return Err("key empty or too long");
    }
    let mut name = String::with_capacity(CONTEXT_HEADER_PREFIX.len() + key.len());
    name.push_str(CONTEXT_HEADER_PREFIX);
    name.push_str(&key.to_ascii_lowercase());
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| "key is not a header token")?;
    let text: Cow<'_, str> = match value {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => return Err("value is null"),
        other => Cow::Owned(other.to_string()),
    };
    if text.len() > MAX_CONTEXT_VALUE_LEN {
        return Err("value too long");
    }
    let value = HeaderValue::from_str(&text).map_err(|_| "value is not a valid header value")?;
    Ok((name, value))
}

/// Keys come from the authorizer and could be huge; logs get a prefix.
fn shown_key(key: &str) -> String {
    key.chars().take(MAX_CONTEXT_KEY_LEN).collect()
}

struct CacheEntry {
    decision: Arc<Decision>,
    stored_at: SystemTime,
}

/// Sharded so that lookups from many workers rarely meet on one lock; each critical section is
/// a hash lookup or, when a shard is full, one pass over it.
struct DecisionCache {
    shards: Vec<Mutex<HashMap<CacheKey, CacheEntry>>>,
    per_shard: usize,
    ttl: Duration,
}

impl DecisionCache {
    fn new(capacity: usize, ttl: Duration) -> Self {
        let per_shard = capacity.div_ceil(CACHE_SHARDS);
        Self {
            shards: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            per_shard,
            ttl,
        }
    }

    fn shard(&self, key: &CacheKey) -> MutexGuard<'_, HashMap<CacheKey, CacheEntry>> {
        // Keys are SHA-256 output, so one byte spreads them evenly.
        lock(&self.shards[usize::from(key[0]) % CACHE_SHARDS])
    }

    fn fresh(&self, entry: &CacheEntry, now: SystemTime) -> bool {
        // A clock that went backwards makes the entry's age unknown: treat it as stale.
        now.duration_since(entry.stored_at)
            .is_ok_and(|age| age < self.ttl)
    }

    fn get(&self, key: &CacheKey, now: SystemTime) -> Option<Arc<Decision>> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(key);
        let entry = shard.get(key)?;
        if self.fresh(entry, now) {
            return Some(Arc::clone(&entry.decision));
        }
        shard.remove(key);
        None
    }

    fn insert(&self, key: CacheKey, decision: Arc<Decision>, now: SystemTime) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(&key);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, e| self.fresh(e, now));
            if shard.len() >= self.per_shard {
                let oldest = shard
                    .iter()
                    .min_by_key(|(_, e)| e.stored_at)
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    shard.remove(&oldest);
                }
            }
        }
        shard.insert(
            key,
            CacheEntry {
                decision,
                stored_at: now,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use serde_json::json;
    use std::convert::Infallible;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Instant, UNIX_EPOCH};
    use tollgate_core::ManualClock;

    type Reply = Box<dyn Fn(&Value) -> (u16, String) + Send + Sync>;

    struct ServerState {
        hits: AtomicUsize,
        connections: AtomicUsize,
        reply: Mutex<Arc<Reply>>,
        delay: Mutex<Duration>,
        /// Every request body received, with its content type.
        seen: Mutex<Vec<(Option<String>, Value)>>,
    }

    /// An authorizer on 127.0.0.1:0 whose answers the test decides.
    struct FakeAuthorizer {
        addr: SocketAddr,
        state: Arc<ServerState>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakeAuthorizer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl FakeAuthorizer {
        async fn start(reply: impl Fn(&Value) -> (u16, String) + Send + Sync + 'static) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let reply: Reply = Box::new(reply);
            let state = Arc::new(ServerState {
                hits: AtomicUsize::new(0),
                connections: AtomicUsize::new(0),
                reply: Mutex::new(Arc::new(reply)),
                delay: Mutex::new(Duration::ZERO),
                seen: Mutex::new(Vec::new()),
            });
            let st = Arc::clone(&state);
            let task = tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    st.connections.fetch_add(1, Ordering::SeqCst);
                    let st = Arc::clone(&st);
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: Request<hyper::body::Incoming>| {
                                let st = Arc::clone(&st);
                                async move { Ok::<_, Infallible>(serve(&st, req).await) }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
            Self { addr, state, task }
        }

        async fn json(body: Value) -> Self {
            let text = body.to_string();
            Self::start(move |_| (200, text.clone())).await
        }

        fn url(&self) -> String {
            format!("http://{}/authorize", self.addr)
        }

        fn hits(&self) -> usize {
            self.state.hits.load(Ordering::SeqCst)
        }

        fn set_delay(&self, delay: Duration) {
            *self.state.delay.lock().expect("lock") = delay;
        }

        fn set_reply(&self, reply: impl Fn(&Value) -> (u16, String) + Send + Sync + 'static) {
            let reply: Reply = Box::new(reply);
            *self.state.reply.lock().expect("lock") = Arc::new(reply);
        }

        fn seen(&self) -> Vec<(Option<String>, Value)> {
            self.state.seen.lock().expect("lock").clone()
        }
    }

    async fn serve(
        st: &ServerState,
        req: Request<hyper::body::Incoming>,
    ) -> http::Response<Full<Bytes>> {
        st.hits.fetch_add(1, Ordering::SeqCst);
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = req.into_body().collect().await.expect("body").to_bytes();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        st.seen
            .lock()
            .expect("lock")
            .push((content_type, json.clone()));
        let delay = *st.delay.lock().expect("lock");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let reply = Arc::clone(&*st.reply.lock().expect("lock"));
        let (status, text) = reply(&json);
        http::Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(text)))
            .expect("response")
    }

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ))
    }

    fn authorizer(url: &str, clock: Arc<ManualClock>) -> Authorizer {
        Authorizer::new(url, Duration::from_secs(2), Duration::from_secs(30), clock)
            .expect("authorizer")
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("api.bank.test"));
        if let Some(auth) = auth {
            h.insert("authorization", HeaderValue::from_str(auth).expect("value"));
        }
        h
    }

    fn request<'a>(headers: &'a HeaderMap, cache_key: Option<&'a str>) -> AuthzRequest<'a> {
        AuthzRequest {
            method: "GET",
            path: "/v1/statements/42",
            headers,
            client_ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
            cache_key,
        }
    }

    async fn decide_with(az: &Authorizer, auth: Option<&str>) -> Result<Arc<Decision>, AuthzError> {
        let h = headers(auth);
        az.decide(&request(&h, auth)).await
    }

    fn allow_consumer(d: &Decision) -> &str {
        match d {
            Decision::Allow { consumer, .. } => consumer,
            Decision::Deny => panic!("expected allow, got deny"),
        }
    }

    fn context(d: &Decision) -> &[(HeaderName, HeaderValue)] {
        match d {
            Decision::Allow {
                context_headers, ..
            } => context_headers,
            Decision::Deny => panic!("expected allow, got deny"),
        }
    }

    /// A port nothing listens on: bound, then released.
    async fn dead_url() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        format!("http://{addr}/authorize")
    }

    #[tokio::test]
    async fn allow_with_context_becomes_headers() {
        let srv = FakeAuthorizer::json(json!({
            "allow": true,
            "consumer": "ledger-reader",
            "context": {"Tenant": "acme", "scope": "statements:read", "level": 3, "vip": true}
        }))
        .await;
        let az = authorizer(&srv.url(), clock());
        let d = decide_with(&az, Some("Bearer abc"))
            .await
            .expect("decision");
        assert_eq!(allow_consumer(&d), "ledger-reader");
        let mut got: Vec<(String, String)> = context(&d)
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().expect("ascii").to_owned()))
            .collect();
        got.sort();
        let want = [
            ("x-auth-level", "3"),
            ("x-auth-scope", "statements:read"),
            ("x-auth-tenant", "acme"),
            ("x-auth-vip", "true"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()));
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn deny_is_a_decision_and_is_cached() {
        let srv = FakeAuthorizer::json(json!({"allow": false})).await;
        let az = authorizer(&srv.url(), clock());
        for _ in 0..2 {
            let d = decide_with(&az, Some("Bearer nope"))
                .await
                .expect("decision");
            assert_eq!(*d, Decision::Deny);
        }
        assert_eq!(srv.hits(), 1);
    }

    #[tokio::test]
    async fn cached_within_ttl_and_asked_again_after() {
        let srv =
            FakeAuthorizer::json(json!({"allow": true, "consumer": "c1", "context": {}})).await;
        let clock = clock();
        let az = authorizer(&srv.url(), Arc::clone(&clock));
        decide_with(&az, Some("Bearer t")).await.expect("first");
        decide_with(&az, Some("Bearer t")).await.expect("second");
        assert_eq!(srv.hits(), 1);
        clock.advance(Duration::from_secs(29));
        decide_with(&az, Some("Bearer t"))
            .await
            .expect("within ttl");
        assert_eq!(srv.hits(), 1);
        clock.advance(Duration::from_secs(1));
        decide_with(&az, Some("Bearer t")).await.expect("after ttl");
        assert_eq!(srv.hits(), 2);
        decide_with(&az, Some("Bearer t"))
            .await
            .expect("cached again");
        assert_eq!(srv.hits(), 2);
    }

    #[tokio::test]
    async fn clock_going_backwards_does_not_extend_an_entry() {
        let srv = FakeAuthorizer::json(json!({"allow": true, "consumer": "c1"})).await;
        let clock = clock();
        let az = authorizer(&srv.url(), Arc::clone(&clock));
        decide_with(&az, Some("Bearer t")).await.expect("first");
        clock.set(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        decide_with(&az, Some("Bearer t")).await.expect("second");
        assert_eq!(srv.hits(), 2);
    }

    #[tokio::test]
    async fn each_credential_gets_its_own_decision() {
        let srv = FakeAuthorizer::start(|req| {
            let auth = req["headers"]["authorization"].as_str().unwrap_or("");
            let consumer = auth.trim_start_matches("Bearer ");
            (
                200,
                json!({"allow": true, "consumer": consumer}).to_string(),
            )
        })
        .await;
        let az = authorizer(&srv.url(), clock());
        let a = decide_with(&az, Some("Bearer alice")).await.expect("a");
        let b = decide_with(&az, Some("Bearer bob")).await.expect("b");
        assert_eq!(allow_consumer(&a), "alice");
        assert_eq!(allow_consumer(&b), "bob");
        assert_eq!(srv.hits(), 2);
        let a2 = decide_with(&az, Some("Bearer alice")).await.expect("a2");
        assert_eq!(allow_consumer(&a2), "alice");
        assert_eq!(srv.hits(), 2);
    }

    #[tokio::test]
    async fn without_authorization_nothing_is_cached() {
        let srv = FakeAuthorizer::json(json!({"allow": true, "consumer": "anon"})).await;
        let az = authorizer(&srv.url(), clock());
        for _ in 0..3 {
            decide_with(&az, None).await.expect("decision");
        }
        assert_eq!(srv.hits(), 3);
        assert_eq!(az.inner.cache.len(), 0);
    }

    #[tokio::test]
    async fn zero_ttl_disables_the_cache() {
        let srv = FakeAuthorizer::json(json!({"allow": true, "consumer": "c"})).await;
        let az = Authorizer::new(&srv.url(), Duration::from_secs(2), Duration::ZERO, clock())
            .expect("authorizer");
        decide_with(&az, Some("Bearer t")).await.expect("first");
        decide_with(&az, Some("Bearer t")).await.expect("second");
        assert_eq!(srv.hits(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_call() {
        let srv = FakeAuthorizer::json(json!({"allow": true, "consumer": "c"})).await;
        srv.set_delay(Duration::from_millis(150));
        let az = Arc::new(authorizer(&srv.url(), clock()));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let az = Arc::clone(&az);
            set.spawn(async move { decide_with(&az, Some("Bearer same")).await });
        }
        while let Some(res) = set.join_next().await {
            let d = res.expect("task").expect("decision");
            assert_eq!(allow_consumer(&d), "c");
        }
        assert_eq!(srv.hits(), 1);
        assert!(lock(&az.inner.inflight).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_error_which_is_not_cached() {
        let srv = FakeAuthorizer::start(|_| (500, "{}".to_owned())).await;
        srv.set_delay(Duration::from_millis(150));
        let az = Arc::new(authorizer(&srv.url(), clock()));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let az = Arc::clone(&az);
            set.spawn(async move { decide_with(&az, Some("Bearer same")).await });
        }
        while let Some(res) = set.join_next().await {
            let err = res.expect("task").expect_err("500 is an error");
            assert!(matches!(err, AuthzError::Unavailable(_)), "{err:?}");
        }
        assert_eq!(srv.hits(), 1);
        srv.set_delay(Duration::ZERO);
        srv.set_reply(|_| (200, json!({"allow": true, "consumer": "c"}).to_string()));
        let d = decide_with(&az, Some("Bearer same"))
            .await
            .expect("recovered");
        assert_eq!(allow_consumer(&d), "c");
        assert_eq!(srv.hits(), 2);
    }

    #[tokio::test]
    async fn a_caller_going_away_does_not_cancel_the_shared_call() {
        let srv = FakeAuthorizer::json(json!({"allow": true, "consumer": "c"})).await;
        srv.set_delay(Duration::from_millis(100));
        let az = authorizer(&srv.url(), clock());
        let gone = tokio::time::timeout(
            Duration::from_millis(20),
            decide_with(&az, Some("Bearer t")),
        )
        .await;
        assert!(gone.is_err(), "the first caller gives up");
        let d = decide_with(&az, Some("Bearer t")).await.expect("decision");
        assert_eq!(allow_consumer(&d), "c");
        assert_eq!(srv.hits(), 1);
    }

    #[tokio::test]
    async fn slow_authorizer_is_unavailable_within_the_timeout() {
        let srv = FakeAuthorizer::json(json!({"allow": true, "consumer": "c"})).await;
        srv.set_delay(Duration::from_secs(1));
        let az = Authorizer::new(
            &srv.url(),
            Duration::from_millis(200),
            Duration::from_secs(30),
            clock(),
        )
        .expect("authorizer");
        let started = Instant::now();
        let err = decide_with(&az, Some("Bearer t"))
            .await
            .expect_err("too slow");
        let took = started.elapsed();
        assert!(matches!(err, AuthzError::Unavailable(_)), "{err:?}");
        assert!(took >= Duration::from_millis(190), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
        assert!(err.reason().contains("no answer within"), "{err}");
    }

    #[tokio::test]
    async fn dead_authorizer_is_unavailable() {
        let az = authorizer(&dead_url().await, clock());
        let err = decide_with(&az, Some("Bearer secret-token"))
            .await
            .expect_err("nobody listening");
        assert!(matches!(err, AuthzError::Unavailable(_)), "{err:?}");
        assert!(!err.to_string().contains("secret-token"));
        assert_eq!(az.inner.cache.len(), 0);
    }

    #[tokio::test]
    async fn non_200_is_unavailable() {
        for status in [500, 403, 204, 302] {
            let srv = FakeAuthorizer::start(move |_| {
                (status, json!({"allow": true, "consumer": "c"}).to_string())
            })
            .await;
            let az = authorizer(&srv.url(), clock());
            let err = decide_with(&az, Some("Bearer t"))
                .await
                .expect_err("non-200");
            assert!(
                matches!(err, AuthzError::Unavailable(_)),
                "{status}: {err:?}"
            );
            assert_eq!(err.reason(), format!("answered {status}"));
        }
    }

    #[tokio::test]
    async fn malformed_answers() {
        let cases: Vec<(&str, String)> = vec![
            ("not json", "allow".to_owned()),
            ("truncated", r#"{"allow": tru"#.to_owned()),
            ("array", "[]".to_owned()),
            ("allow missing", r#"{"consumer": "c"}"#.to_owned()),
            (
                "allow not bool",
                r#"{"allow": "yes", "consumer": "c"}"#.to_owned(),
            ),
            ("no consumer", r#"{"allow": true}"#.to_owned()),
            (
                "null consumer",
                r#"{"allow": true, "consumer": null}"#.to_owned(),
            ),
            (
                "empty consumer",
                r#"{"allow": true, "consumer": ""}"#.to_owned(),
            ),
            (
                "blank consumer",
                r#"{"allow": true, "consumer": "  "}"#.to_owned(),
            ),
            (
                "numeric consumer",
                r#"{"allow": true, "consumer": 7}"#.to_owned(),
            ),
            (
                "consumer with newline",
                r#"{"allow": true, "consumer": "a\nb"}"#.to_owned(),
            ),
            (
                "consumer too long",
                json!({"allow": true, "consumer": "c".repeat(300)}).to_string(),
            ),
            (
                "context not object",
                r#"{"allow": true, "consumer": "c", "context": [1]}"#.to_owned(),
            ),
            (
                "too large",
                json!({"allow": true, "consumer": "c", "pad": "x".repeat(70_000)}).to_string(),
            ),
        ];
        for (what, body) in cases {
            let srv = FakeAuthorizer::start(move |_| (200, body.clone())).await;
            let az = authorizer(&srv.url(), clock());
            let err = decide_with(&az, Some("Bearer t")).await.expect_err(what);
            assert!(matches!(err, AuthzError::Malformed(_)), "{what}: {err:?}");
            assert_eq!(az.inner.cache.len(), 0, "{what}: errors are not cached");
        }
    }

    #[tokio::test]
    async fn malformed_reason_does_not_quote_the_answer() {
        let srv = FakeAuthorizer::start(|_| {
            (
                200,
                r#"{"allow": "leaked-value", "consumer": "c"}"#.to_owned(),
            )
        })
        .await;
        let az = authorizer(&srv.url(), clock());
        let err = decide_with(&az, Some("Bearer t"))
            .await
            .expect_err("malformed");
        assert!(!err.to_string().contains("leaked-value"), "{err}");
    }

    #[tokio::test]
    async fn deny_with_odd_extras_is_still_a_deny() {
        let srv =
            FakeAuthorizer::json(json!({"allow": false, "consumer": 5, "context": "x"})).await;
        let az = authorizer(&srv.url(), clock());
        let d = decide_with(&az, Some("Bearer t")).await.expect("decision");
        assert_eq!(*d, Decision::Deny);
    }

    #[tokio::test]
    async fn hostile_context_is_skipped_and_capped() {
        let mut ctx = serde_json::Map::new();
        for i in 0..1000 {
            ctx.insert(format!("k{i:04}"), json!(format!("v{i}")));
        }
        ctx.insert("bad key".into(), json!("v"));
        ctx.insert("ünï".into(), json!("v"));
        ctx.insert(String::new(), json!("v"));
        ctx.insert("a:b".into(), json!("v"));
        ctx.insert("k".repeat(5000), json!("v"));
        ctx.insert("huge".into(), json!("x".repeat(5000)));
        ctx.insert("crlf".into(), json!("a\r\nx-injected: 1"));
        ctx.insert("nul".into(), json!("a\u{0}b"));
        ctx.insert(
            "nested".into(),
            json!({"deep": [1, 2, {"x": "y".repeat(2000)}]}),
        );
        ctx.insert("nothing".into(), Value::Null);
        let srv =
            FakeAuthorizer::json(json!({"allow": true, "consumer": "c", "context": ctx})).await;
        let az = authorizer(&srv.url(), clock());
        let d = decide_with(&az, Some("Bearer t")).await.expect("decision");
        let headers = context(&d);
        assert!(!headers.is_empty());
        assert!(headers.len() <= MAX_CONTEXT_ENTRIES, "{}", headers.len());
        let mut total = 0;
        for (name, value) in headers {
            assert!(name.as_str().starts_with(CONTEXT_HEADER_PREFIX), "{name}");
            assert!(name.as_str().len() <= CONTEXT_HEADER_PREFIX.len() + MAX_CONTEXT_KEY_LEN);
            assert!(value.len() <= MAX_CONTEXT_VALUE_LEN);
            assert!(
                !value
                    .as_bytes()
                    .iter()
                    .any(|b| *b == b'\r' || *b == b'\n' || *b == 0)
            );
            total += name.as_str().len() + value.len();
        }
        assert!(total <= MAX_CONTEXT_TOTAL_BYTES);
        for gone in ["x-auth-huge", "x-auth-crlf", "x-auth-nul", "x-auth-nothing"] {
            assert!(headers.iter().all(|(n, _)| n != gone), "{gone}");
        }
    }

    #[tokio::test]
    async fn context_edge_cases() {
        let srv = FakeAuthorizer::json(json!({
            "allow": true,
            "consumer": "c",
            "context": {
                "Plan": "gold",
                "plan": "silver",
                "bad key": "v",
                "huge": "x".repeat(MAX_CONTEXT_VALUE_LEN + 1),
                "max": "y".repeat(MAX_CONTEXT_VALUE_LEN),
                "ratio": 0.5,
                "list": [1, "a"],
                "nothing": null,
                "utf8": "café"
            }
        }))
        .await;
        let az = authorizer(&srv.url(), clock());
        let d = decide_with(&az, Some("Bearer t")).await.expect("decision");
        let got: HashMap<&str, &[u8]> = context(&d)
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(got.len(), 5, "{got:?}");
        // One of the two case variants wins; which one depends on map order.
        assert!(matches!(got["x-auth-plan"], b"gold" | b"silver"));
        assert_eq!(got["x-auth-max"].len(), MAX_CONTEXT_VALUE_LEN);
        assert_eq!(got["x-auth-ratio"], b"0.5");
        assert_eq!(got["x-auth-list"], br#"[1,"a"]"#);
        assert_eq!(got["x-auth-utf8"], "café".as_bytes());
    }

    #[tokio::test]
    async fn request_body_has_the_documented_shape() {
        let srv = FakeAuthorizer::json(json!({"allow": false})).await;
        let az = authorizer(&srv.url(), clock());
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("api.bank.test"));
        h.insert("Authorization", HeaderValue::from_static("Bearer abc"));
        h.append("x-multi", HeaderValue::from_static("one"));
        h.append("x-multi", HeaderValue::from_static("two"));
        h.insert(
            "x-binary",
            HeaderValue::from_bytes(b"\xff\xfe").expect("obs-text"),
        );
        h.append(
            "x-partly",
            HeaderValue::from_bytes(b"\xff").expect("obs-text"),
        );
        h.append("x-partly", HeaderValue::from_static("ok"));
        h.insert(
            "x-utf8",
            HeaderValue::from_bytes("naïve".as_bytes()).expect("obs-text"),
        );
        let req = AuthzRequest {
            method: "POST",
            path: "/v1/statements/42",
            headers: &h,
            client_ip: "2001:db8::1".parse().expect("ip"),
            cache_key: Some("Bearer abc"),
        };
        az.decide(&req).await.expect("decision");
        let seen = srv.seen();
        assert_eq!(seen.len(), 1);
        let (content_type, body) = &seen[0];
        assert_eq!(content_type.as_deref(), Some("application/json"));
        assert_eq!(
            *body,
            json!({
                "method": "POST",
                "path": "/v1/statements/42",
                "headers": {
                    "host": "api.bank.test",
                    "authorization": "Bearer abc",
                    "x-multi": "one, two",
                    "x-partly": "ok",
                    "x-utf8": "naïve"
                },
                "client_ip": "2001:db8::1"
            })
        );
    }

    #[tokio::test]
    async fn connections_are_reused() {
        let srv = FakeAuthorizer::json(json!({"allow": false})).await;
        let az = authorizer(&srv.url(), clock());
        for _ in 0..3 {
            decide_with(&az, None).await.expect("decision");
        }
        assert_eq!(srv.hits(), 3);
        assert_eq!(srv.state.connections.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn config_is_checked() {
        let c: Arc<dyn Clock> = clock();
        let new = |url: &str, timeout: Duration| {
            Authorizer::new(url, timeout, Duration::from_secs(30), Arc::clone(&c)).map(|_| ())
        };
        let ok = Duration::from_millis(500);
        assert_eq!(new("http://127.0.0.1:9191/authorize", ok), Ok(()));
        assert_eq!(new("HTTP://authz.internal/authorize", ok), Ok(()));
        assert_eq!(
            new("https://127.0.0.1:9191/authorize", ok),
            Err(AuthorizerConfigError::NotHttp)
        );
        assert_eq!(new("/authorize", ok), Err(AuthorizerConfigError::NotHttp));
        assert_eq!(
            new("http://user:pw@127.0.0.1:9191/authorize", ok),
            Err(AuthorizerConfigError::UserInfo)
        );
        assert!(matches!(
            new("http://exa mple/", ok),
            Err(AuthorizerConfigError::InvalidUrl(_))
        ));
        assert_eq!(
            new("http://127.0.0.1:9191/authorize", Duration::ZERO),
            Err(AuthorizerConfigError::ZeroTimeout)
        );
        let err = new("http://user:hunter2@h/?key=s3cret", ok).expect_err("userinfo");
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn cache_is_bounded_and_evicts_the_oldest() {
        let cache = DecisionCache::new(CACHE_SHARDS * 2, Duration::from_secs(30));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let deny = Arc::new(Decision::Deny);
        for i in 0u32..1000 {
            let key: CacheKey = Sha256::digest(i.to_be_bytes()).into();
            cache.insert(
                key,
                Arc::clone(&deny),
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert!(cache.len() <= CACHE_SHARDS * 2, "{}", cache.len());
        let newest: CacheKey = Sha256::digest(999u32.to_be_bytes()).into();
        assert!(cache.get(&newest, t0 + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn decide_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        let az = authorizer("http://127.0.0.1:9/authorize", clock());
        let h = headers(Some("Bearer t"));
        let req = request(&h, Some("Bearer t"));
        let fut = az.decide(&req);
        assert_send(&fut);
    }
}
