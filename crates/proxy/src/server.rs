//! Listeners and connections: accept loops with a connection cap, TLS handshakes, HTTP/1.1 and
//! HTTP/2 (h2c by prior knowledge on the plain listener, ALPN on TLS), and graceful shutdown:
//! stop accepting, let in-flight requests finish, close idle connections.

use crate::gateway::Gateway;
use crate::metrics::ListenerLabels;
use crate::pipeline::{ConnMeta, handle};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
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
    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which also means shut down.
        let _ = self.0.wait_for(|v| *v).await;
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
        let snap = self.snapshot();
        let server = &snap.config().server;
        let permits = Arc::new(Semaphore::new(server.max_connections));
        let grace = server.shutdown_grace.get();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(server.header_read_timeout.get())
            // Our own limits answer with problem documents; hyper's stay above them as a
            // backstop against heads too large to even parse.
            .max_buf_size(
                (server.max_header_bytes + server.max_uri_bytes + 4096).max(16 * 1024) * 2,
            )
            .max_headers(server.max_headers.saturating_mul(2).max(100));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(
                u32::try_from(server.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
            )
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let builder = Arc::new(builder);
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
                grace,
            )));
        }
        if let (Some(l), Some(resolver)) = (bound.tls, self.shared.tls_resolver.clone()) {
            let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(resolver));
            let handshake_timeout = server.header_read_timeout.get();
            tasks.push(tokio::spawn(accept_loop(
                self.clone(),
                l,
                Listener::Tls,
                Some((acceptor, handshake_timeout)),
                builder.clone(),
                permits.clone(),
                shutdown.clone(),
                grace,
            )));
        }
        for t in tasks {
            let _ = t.await;
        }
        self.flush_access_log();
    }
}

fn with_addr(e: std::io::Error, name: &str, addr: SocketAddr) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({name}): {e}"))
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    gw: Gateway,
    listener: TcpListener,
    kind: Listener,
    tls: Option<(tokio_rustls::TlsAcceptor, Duration)>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    permits: Arc<Semaphore>,
    mut shutdown: Shutdown,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
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
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnMeta {
            peer,
            peer_value: crate::forward::peer_value(peer.ip()),
            listener: kind,
        };
        let shared = gw.shared.clone();
        let service = service_fn(move |req| handle(shared.clone(), conn.clone(), req));
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let open = open.clone();
        open.inc();
        match &tls {
            None => {
                tokio::spawn(async move {
                    let c = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(c.into_owned()).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    open.dec();
                    drop(permit);
                });
            }
            Some((acceptor, timeout)) => {
                let acceptor = acceptor.clone();
                let timeout = *timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let c = builder.serve_connection(TokioIo::new(tls_stream), service);
                            if let Err(e) = watcher.watch(c.into_owned()).await {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                    open.dec();
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = label.listener,
            "grace period over; closing remaining connections"
        );
    }
}
