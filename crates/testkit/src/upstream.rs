//! Real HTTP/1.1 upstream servers on `127.0.0.1:0`.
//!
//! Each [`Upstream`] runs on its own thread with its own single-threaded tokio runtime, so it
//! keeps serving whatever the test's runtime is doing (and whichever flavour it is), and it
//! stops when dropped.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

/// Echoed request bodies are kept up to this size; the rest is counted and dropped.
const ECHO_BODY_LIMIT: usize = 1024 * 1024;
/// Size of each generated chunk of a streamed response.
const CHUNK: usize = 64 * 1024;
static ZEROS: [u8; CHUNK] = [b'x'; CHUNK];

/// What an upstream does with each request.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Answers with a JSON echo like the scenario's sample backends:
    /// `{"service","method","path","query","headers":{lower-case name: value},"body"}`.
    Echo,
    /// Accepts connections and reads from them, but never answers.
    Hang,
    /// Answers 200 with a body of this many bytes, generated on the fly.
    Stream(u64),
    /// Reads the request body frame by frame without keeping it, then answers
    /// `{"service", "bytes": N}` with the count.
    Sink,
}

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

#[derive(Debug, Default)]
struct State {
    hits: AtomicU64,
    connections: AtomicU64,
    body_bytes: AtomicU64,
    seen: Mutex<Vec<Seen>>,
}

/// Configures an [`Upstream`] before it starts.
#[derive(Debug, Clone)]
pub struct UpstreamBuilder {
    name: String,
    status: u16,
    delay: Duration,
    read_pause: Duration,
    behaviour: Behaviour,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Default for UpstreamBuilder {
    fn default() -> Self {
        Self {
            name: "upstream".into(),
            status: 200,
            delay: Duration::ZERO,
            read_pause: Duration::ZERO,
            behaviour: Behaviour::Echo,
            headers: Vec::new(),
        }
    }
}

impl UpstreamBuilder {
    /// The `service` member of echoed bodies.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Status of every response (echo and sink).
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Wait this long before sending the response head.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Wait this long after the request head before reading the body (backpressure tests).
    pub fn read_pause(mut self, pause: Duration) -> Self {
        self.read_pause = pause;
        self
    }

    pub fn behaviour(mut self, b: Behaviour) -> Self {
        self.behaviour = b;
        self
    }

    /// An extra header on every response.
    ///
    /// # Panics
    /// If the name or value is not a valid header (a test bug).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        #[allow(clippy::expect_used)]
        self.headers.push((
            HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            HeaderValue::from_str(value).expect("valid header value"),
        ));
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on a thread of its own.
    pub async fn spawn(self) -> Upstream {
        self.spawn_sync()
    }

    /// Like [`spawn`](Self::spawn), for synchronous callers.
    ///
    /// # Panics
    /// If no loopback port can be bound or the thread cannot start.
    #[allow(clippy::expect_used)]
    pub fn spawn_sync(self) -> Upstream {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind an upstream port");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let cfg = Arc::new(self);
        let st = state.clone();
        std::thread::Builder::new()
            .name(format!("upstream-{}", cfg.name))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("upstream runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
                    tokio::select! {
                        _ = accept_loop(listener, cfg, st) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime cancels every connection task and closes its socket.
            })
            .expect("spawn upstream thread");
        Upstream {
            addr,
            state,
            _stop: stop_tx,
        }
    }
}

/// A running upstream server; stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: oneshot::Sender<()>,
}

impl Upstream {
    pub fn builder() -> UpstreamBuilder {
        UpstreamBuilder::default()
    }

    /// An echo backend named `name`.
    pub async fn echo(name: &str) -> Upstream {
        Self::builder().name(name).spawn().await
    }

    /// An echo backend that waits `delay` before answering.
    pub async fn slow(name: &str, delay: Duration) -> Upstream {
        Self::builder().name(name).delay(delay).spawn().await
    }

    /// Accepts connections, never answers.
    pub async fn hanging() -> Upstream {
        Self::builder()
            .name("hang")
            .behaviour(Behaviour::Hang)
            .spawn()
            .await
    }

    /// Answers every request with `n` generated bytes.
    pub async fn streaming(n: u64) -> Upstream {
        Self::builder()
            .name("stream")
            .behaviour(Behaviour::Stream(n))
            .spawn()
            .await
    }

    /// Counts request body bytes and answers with the count.
    pub async fn sink() -> Upstream {
        Self::builder()
            .name("sink")
            .behaviour(Behaviour::Sink)
            .spawn()
            .await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received (counted when the head arrives).
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Request body bytes received so far, over all requests.
    pub fn body_bytes(&self) -> u64 {
        self.state.body_bytes.load(Ordering::SeqCst)
    }

    /// Every request head received, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The most recent request head.
    pub fn last_seen(&self) -> Option<Seen> {
        self.seen().pop()
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    cfg: Arc<UpstreamBuilder>,
    state: Arc<State>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let _ = stream.set_nodelay(true);
        let cfg = cfg.clone();
        let state = state.clone();
        if matches!(cfg.behaviour, Behaviour::Hang) {
            tokio::spawn(async move {
                let mut stream = stream;
                let mut buf = vec![0u8; 16 * 1024];
                let mut counted = false;
                // Read (so the peer never blocks on a full window) and never answer.
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if !counted {
                        counted = true;
                        state.hits.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
            continue;
        }
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(cfg.clone(), state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    cfg: Arc<UpstreamBuilder>,
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let (parts, mut body) = req.into_parts();
    state
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers.clone(),
        });

    if !cfg.read_pause.is_zero() {
        tokio::time::sleep(cfg.read_pause).await;
    }
    // Read the request body frame by frame; keep at most ECHO_BODY_LIMIT of it.
    let keep = matches!(cfg.behaviour, Behaviour::Echo);
    let mut kept: Vec<u8> = Vec::new();
    let mut total: u64 = 0;
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    total += d.len() as u64;
                    state.body_bytes.fetch_add(d.len() as u64, Ordering::SeqCst);
                    if keep && kept.len() < ECHO_BODY_LIMIT {
                        let room = ECHO_BODY_LIMIT - kept.len();
                        kept.extend_from_slice(&d[..d.len().min(room)]);
                    }
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }

    if !cfg.delay.is_zero() {
        tokio::time::sleep(cfg.delay).await;
    }

    let status = StatusCode::from_u16(cfg.status).unwrap_or(StatusCode::OK);
    let mut resp = match &cfg.behaviour {
        Behaviour::Echo => {
            let mut headers = serde_json::Map::new();
            for name in parts.headers.keys() {
                let joined: Vec<String> = parts
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect();
                headers.insert(name.as_str().to_string(), joined.join(", ").into());
            }
            let doc = serde_json::json!({
                "service": cfg.name,
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "query": parts.uri.query(),
                "headers": headers,
                "body": String::from_utf8_lossy(&kept),
                "body_bytes": total,
                "body_error": body_error,
            });
            let mut r = Response::new(UpBody::full(serde_json::to_vec(&doc).unwrap_or_default()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            *r.status_mut() = status;
            r
        }
        Behaviour::Sink => {
            let doc =
                serde_json::json!({"service": cfg.name, "bytes": total, "body_error": body_error});
            let mut r = Response::new(UpBody::full(serde_json::to_vec(&doc).unwrap_or_default()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            *r.status_mut() = status;
            r
        }
        Behaviour::Stream(n) => {
            let mut r = Response::new(UpBody::Generated { remaining: *n });
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        Behaviour::Hang => Response::new(UpBody::full(Vec::new())),
    };
    for (k, v) in &cfg.headers {
        resp.headers_mut().append(k.clone(), v.clone());
    }
    Ok(resp)
}

/// Response bodies of the test upstream: a buffer, or bytes generated as they are polled.
#[derive(Debug)]
pub enum UpBody {
    Full(Option<Bytes>),
    Generated { remaining: u64 },
}

impl UpBody {
    fn full(v: Vec<u8>) -> Self {
        UpBody::Full(Some(Bytes::from(v)))
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            UpBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Generated { remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = (*remaining).min(CHUNK as u64) as usize;
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n])))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Full(b) => b.is_none(),
            UpBody::Generated { remaining } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            UpBody::Full(None) => SizeHint::with_exact(0),
            UpBody::Generated { remaining } => SizeHint::with_exact(*remaining),
        }
    }
}

/// A loopback address that refuses connections: a port bound and then released.
///
/// # Panics
/// If no loopback port can be bound.
#[allow(clippy::expect_used)]
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to release");
    let addr = l.local_addr().expect("local addr");
    drop(l);
    addr
}

/// A loopback address whose connects neither succeed nor fail: a listener with a backlog of 0
/// whose only queue slot is taken, so the kernel drops further SYNs. Keeps working while alive.
#[derive(Debug)]
pub struct Blackhole {
    addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _filler: std::net::TcpStream,
}

impl Blackhole {
    /// Must be called inside a tokio runtime.
    pub async fn new() -> anyhow::Result<Self> {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind("127.0.0.1:0".parse()?)?;
        let listener = sock.listen(0)?;
        let addr = listener.local_addr()?;
        let filler = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        // Prove the hole: a further connect must time out rather than succeed or be refused.
        let probe = tokio::task::spawn_blocking(move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300))
        })
        .await?;
        match probe {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            other => {
                anyhow::bail!("blackhole {addr} is not a blackhole: probe connect gave {other:?}")
            }
        }
        Ok(Self {
            addr,
            _listener: listener,
            _filler: filler,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
