//! Listeners and connections: accept loops with a connection cap, TLS handshakes, HTTP/1.1 and
//! HTTP/2 (h2c by prior knowledge on the plain listener, ALPN on TLS), and graceful shutdown:
//! stop accepting, let in-flight requests finish, close idle connections.

use crate::body::ClientBody;
use crate::gateway::Gateway;
use crate::gateway::Shared;
use crate::h1::{HeadLimits, Transport};
use crate::metrics::ListenerLabels;
use crate::pipeline::{ConnMeta, handle};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tollgate_core::Listener;

/// Sockets bound before serving, so callers learn the real ports (tests bind port 0).
#[derive(Debug)]
pub struct Bound {
    public: Option<TcpListener>,
    tls: Option<TcpListener>,
    pub public_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
}

/// A shutdown signal that any number of tasks can wait on.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// Triggers [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

pub fn shutdown_pair() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Triggered, or the trigger is gone (which [`Shutdown::wait`] also takes as the signal).
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which also means shut down.
        let _ = self.0.wait_for(|v| *v).await;
    }
}

/// Every few seconds, closes upstream connections that sat idle past their pool's timeout or
/// that the upstream closed. Requests never wait for this: checkout skips such connections too.
async fn reap_idle_upstreams(gateway: Gateway, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        for up in gateway.snapshot().upstreams.values() {
            up.reap_idle();
        }
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // Lets a restarted gateway bind while old connections sit in TIME_WAIT.
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}

impl Gateway {
    /// Binds the public and TLS listeners named in the config.
    pub async fn bind(&self) -> std::io::Result<Bound> {
        let snap = self.snapshot();
        let cfg = snap.config();
        let mut b = Bound {
            public: None,
            tls: None,
            public_addr: None,
            tls_addr: None,
        };
        if let Some(p) = &cfg.listeners.public {
            let l = bind(p.addr.0)
                .await
                .map_err(|e| with_addr(e, "public", p.addr.0))?;
            b.public_addr = Some(l.local_addr()?);
            b.public = Some(l);
        }
        if let Some(t) = &cfg.listeners.tls {
            let l = bind(t.addr.0)
                .await
                .map_err(|e| with_addr(e, "tls", t.addr.0))?;
            b.tls_addr = Some(l.local_addr()?);
            b.tls = Some(l);
        }
        Ok(b)
    }

    /// Serves until `shutdown` fires, then drains: no new connections, in-flight requests get
    /// up to the configured grace period, idle keep-alive connections are closed.
    pub async fn serve(&self, bound: Bound, shutdown: Shutdown) {
        // The settings, not the snapshot: held for the server's lifetime, the first snapshot
        // would keep its routes (and their metric series) alive through every reload.
        let server = self.snapshot().config().server.clone();
        let permits = Arc::new(Semaphore::new(server.max_connections));
        let grace = server.shutdown_grace.get();
        let builder = Arc::new(Protocols::new(&server));
        let mut tasks = Vec::new();
        if let Some(l) = bound.public {
            tasks.push(tokio::spawn(accept_loop(
                self.clone(),
                l,
                Listener::Public,
                None,
                builder.clone(),
                permits.clone(),
                shutdown.clone(),
            )));
        }
        if let Some(l) = bound.tls {
            let handshake_timeout = server.header_read_timeout.get();
            tasks.push(tokio::spawn(accept_loop(
                self.clone(),
                l,
                Listener::Tls,
                Some(handshake_timeout),
                builder.clone(),
                permits.clone(),
                shutdown.clone(),
            )));
        }
        let reaper = tokio::spawn(reap_idle_upstreams(self.clone(), shutdown.clone()));
        for t in tasks {
            let _ = t.await;
        }
        // Every connection holds a permit until it closes: having them all back means the
        // drain is over. Idle connections close at once; in-flight ones get the grace period.
        let all = u32::try_from(server.max_connections).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("grace period over; closing remaining connections");
        }
        reaper.abort();
        self.flush_access_log();
    }
}

fn with_addr(e: std::io::Error, name: &str, addr: SocketAddr) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({name}): {e}"))
}

/// The next connection, or `None` once `shutdown` fires. An accept error (out of file
/// descriptors, most likely) is logged and retried after a pause instead of spinning.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &mut Shutdown,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.wait() => return None,
        }
    }
}

async fn accept_loop(
    gw: Gateway,
    listener: TcpListener,
    kind: Listener,
    tls_handshake_timeout: Option<Duration>,
    builder: Arc<Protocols>,
    permits: Arc<Semaphore>,
    mut shutdown: Shutdown,
) {
    let label = ListenerLabels {
        listener: match kind {
            Listener::Public => "public",
            Listener::Tls => "tls",
        },
    };
    let open = gw.metrics().connections_open.get_or_create(&label).clone();
    loop {
        // Take a connection slot first: at the cap we stop accepting, and the kernel queues.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.wait() => break,
        };
        let Some((stream, peer)) = accept(&listener, &mut shutdown).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnMeta {
            peer,
            peer_value: crate::forward::peer_value(peer.ip()),
            listener: kind,
            client_cert: None,
        };
        let builder = builder.clone();
        let shared = gw.shared.clone();
        let open = open.clone();
        let shutdown = shutdown.clone();
        open.inc();
        tokio::spawn(async move {
            match tls_handshake_timeout {
                None => match sniff(stream, builder.first_bytes_timeout).await {
                    Ok(Some((io, true))) => builder.serve_h2(io, shared, conn, shutdown).await,
                    Ok(Some((io, false))) => {
                        let (prefix, len, stream) = io.into_parts();
                        crate::h1::serve(
                            Transport::Tcp(stream),
                            &prefix[..len],
                            shared,
                            conn,
                            builder.http1,
                            shutdown,
                        )
                        .await;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, %peer, "no request head in time"),
                },
                Some(timeout) => {
                    // Each handshake uses the TLS settings of the config in force now, so a
                    // reload changes certificates and client CAs for new connections only.
                    let Some(tls) = shared.snapshot.load().tls_config.clone() else {
                        tracing::error!("TLS listener without TLS settings");
                        open.dec();
                        return;
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let (_, session) = tls_stream.get_ref();
                            let is_h2 = session.alpn_protocol() == Some(b"h2");
                            let client_cert = session
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(crate::tls::client_identity)
                                .map(Arc::new);
                            let conn = ConnMeta {
                                client_cert,
                                ..conn
                            };
                            if is_h2 {
                                builder.serve_h2(tls_stream, shared, conn, shutdown).await;
                            } else {
                                crate::h1::serve(
                                    Transport::Tls(Box::new(tls_stream)),
                                    &[],
                                    shared,
                                    conn,
                                    builder.http1,
                                    shutdown,
                                )
                                .await;
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            open.dec();
            drop(permit);
        });
    }
}

/// The HTTP/1.1 and HTTP/2 connection settings, built once per `serve`.
///
/// We pick the protocol ourselves (ALPN on TLS, the connection preface on the plain listener)
/// rather than using hyper-util's auto builder, because its preface read has no timeout: a
/// client that connects and sends nothing would hold a connection slot forever. HTTP/1.1 is
/// our own server (`crate::h1`); HTTP/2 is hyper's.
pub(crate) struct Protocols {
    http1: crate::h1::Settings,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    first_bytes_timeout: Duration,
    send_timeout: Duration,
}

impl Protocols {
    fn new(server: &tollgate_config::Server) -> Self {
        let http1 = crate::h1::Settings {
            limits: HeadLimits {
                // Our own limits answer with specific problems once the head is parsed; these
                // stay above them and only keep the buffer bounded.
                // Saturating: validation bounds both, but a bound checked elsewhere must not
                // be what stands between a config value and a panic.
                max_head: server
                    .max_header_bytes
                    .saturating_add(server.max_uri_bytes)
                    .saturating_add(4096)
                    .max(16 * 1024)
                    .saturating_mul(2),
                max_fields: server.max_headers.saturating_mul(2).max(100),
            },
            header_read_timeout: server.header_read_timeout.get(),
        };
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(
                u32::try_from(server.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
            )
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        Self {
            http1,
            http2,
            first_bytes_timeout: server.header_read_timeout.get(),
            send_timeout: server.send_timeout.get(),
        }
    }

    /// Serves an HTTP/2 connection; on shutdown, sends GOAWAY and lets open streams finish.
    async fn serve_h2<I>(&self, io: I, shared: Arc<Shared>, conn: ConnMeta, mut shutdown: Shutdown)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Streams in flight, response bodies included, so shutdown can tell a busy connection
        // from an idle one.
        let streams = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = streams.clone();
        let sending = Arc::new(Sending::default());
        let watched = sending.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let stream = InFlight::enter(&counted);
            let sending = watched.clone();
            let fields = crate::pipeline::HeadFields::of(req.headers());
            let head = req.method() == http::Method::HEAD;
            let (shared, conn) = (shared.clone(), conn.clone());
            async move {
                let response = handle(shared, conn, req.map(ClientBody::Hyper), &fields);
                // hyper writes HEADERS frames from the map alone.
                let mut response = response.await?;
                crate::pipeline::materialize(&mut response);
                // hyper sends a HEAD response's body as DATA frames, which clients rightly
                // refuse (RFC 9113 §8.1.1); our own HTTP/1.1 writer leaves it out itself.
                if head {
                    response.body_mut().clear_for_head();
                }
                Ok::<_, std::convert::Infallible>(response.map(|body| Counted {
                    body,
                    _stream: stream,
                    sending,
                    handed: false,
                }))
            }
        });
        let connection = self.http2.serve_connection(TokioIo::new(io), service);
        let mut connection = std::pin::pin!(connection);
        // A connection without streams is idle, like an HTTP/1.1 one waiting for its next
        // head, and gets as long (`header_read_timeout`): hyper has no idle timeout of its
        // own, and PINGs a live but silent client answers would keep it, and its connection
        // slot, forever. Closing starts with a GOAWAY; hyper then waits for the peer to
        // acknowledge its PING, which a peer that stopped reading never does, so one with no
        // stream in flight for a second (time for streams already on the wire) is let go.
        let idle_limit = self.first_bytes_timeout;
        let open_tick = (idle_limit / 10).clamp(H2_CLOSING_TICK, Duration::from_secs(1));
        let (mut closing, mut idle) = (false, Duration::ZERO);
        // A response waiting on the client's flow-control window is not polled by hyper, so
        // nothing on the stream could time it out: the connection watches instead, as nginx's
        // `send_timeout` does. Without it a client that stops reading keeps its requests'
        // upstream slots (up to 256 per connection) for as long as it likes.
        let (mut frames_seen, mut stalled) = (0, Duration::ZERO);
        let result = loop {
            let tick = if closing { H2_CLOSING_TICK } else { open_tick };
            tokio::select! {
                r = connection.as_mut() => break r,
                _ = shutdown.wait(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    (closing, idle) = (true, Duration::ZERO);
                }
                _ = tokio::time::sleep(tick) => {
                    let frames = sending.frames.load(std::sync::atomic::Ordering::Relaxed);
                    if frames != frames_seen
                        || sending.waiting.load(std::sync::atomic::Ordering::Relaxed) == 0
                    {
                        (frames_seen, stalled) = (frames, Duration::ZERO);
                    } else {
                        stalled += tick;
                        if stalled >= self.send_timeout {
                            tracing::debug!("HTTP/2 client took no response data within send_timeout; closing");
                            break Ok(());
                        }
                    }
                    if streams.load(std::sync::atomic::Ordering::Acquire) != 0 {
                        idle = Duration::ZERO;
                        continue;
                    }
                    idle += tick;
                    if closing && idle >= H2_CLOSING_IDLE {
                        break Ok(());
                    }
                    if !closing && idle >= idle_limit {
                        connection.as_mut().graceful_shutdown();
                        (closing, idle) = (true, Duration::ZERO);
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// While closing, an HTTP/2 connection is checked this often for streams in flight, and let
/// go once it has had none for `H2_CLOSING_IDLE`.
const H2_CLOSING_TICK: Duration = Duration::from_millis(100);
const H2_CLOSING_IDLE: Duration = Duration::from_secs(1);

/// One HTTP/2 stream counted in its connection's streams in flight until dropped.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn enter(streams: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        streams.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(streams.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Whether an HTTP/2 connection's responses are moving: data frames handed to hyper, and
/// bodies that handed one and have not been asked for the next (hyper asks once the client's
/// window has room again).
#[derive(Default)]
struct Sending {
    frames: std::sync::atomic::AtomicU64,
    waiting: std::sync::atomic::AtomicUsize,
}

/// A response body that keeps its stream counted until it is done with, and tells its
/// connection when it waits on the client.
struct Counted<B> {
    body: B,
    /// Held, never read: dropping it uncounts the stream.
    _stream: InFlight,
    sending: Arc<Sending>,
    /// Handed hyper a data frame and not polled since: counted in `sending.waiting`.
    handed: bool,
}

impl<B> Counted<B> {
    fn unwait(&mut self) {
        if std::mem::take(&mut self.handed) {
            self.sending
                .waiting
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.unwait();
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        use std::sync::atomic::Ordering::Relaxed;
        let this = &mut *self;
        this.unwait();
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
        {
            this.sending.frames.fetch_add(1, Relaxed);
            this.sending.waiting.fetch_add(1, Relaxed);
            this.handed = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Reads just enough of a plain connection to tell HTTP/2 prior knowledge from HTTP/1.1,
/// within `timeout`. Returns the stream with those bytes put back, or `None` if the client
/// closed without sending anything.
async fn sniff(
    mut stream: tokio::net::TcpStream,
    timeout: Duration,
) -> std::io::Result<Option<(Prefixed<tokio::net::TcpStream>, bool)>> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 24];
    let mut n = 0;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf[n..]))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request within the header read timeout",
                )
            })??;
        if read == 0 {
            if n == 0 {
                return Ok(None);
            }
            // A partial head followed by EOF: let HTTP/1.1 answer or close it.
            break;
        }
        n += read;
        if buf[..n] != H2_PREFACE[..n] {
            break;
        }
        if n == buf.len() {
            return Ok(Some((Prefixed::new(buf, n, stream), true)));
        }
    }
    Ok(Some((Prefixed::new(buf, n, stream), false)))
}

impl<S> Prefixed<S> {
    /// The bytes read so far (`prefix[..len]`) and the stream.
    fn into_parts(self) -> ([u8; 24], usize, S) {
        (self.prefix, self.len, self.inner)
    }
}

/// A stream with a few already-read bytes put back in front.
pub(crate) struct Prefixed<S> {
    prefix: [u8; 24],
    pos: usize,
    len: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: [u8; 24], len: usize, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            len,
            inner,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.len {
            let n = (this.len - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_is_triggered_by_the_signal_or_by_its_trigger_going_away() {
        let (trigger, shutdown) = shutdown_pair();
        assert!(!shutdown.is_triggered());
        trigger.trigger();
        assert!(shutdown.is_triggered());
        let (trigger, shutdown) = shutdown_pair();
        drop(trigger);
        assert!(shutdown.is_triggered());
    }
}
