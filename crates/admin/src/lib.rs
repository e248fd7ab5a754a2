//! Tollgate's admin listener and management plane: unauthenticated health and Prometheus
//! metrics; the platform/tenant-admin API of `spec/ADMIN.md` (tenants, registered OpenAPI
//! documents, plans, consumers, keys, usage) backed by the store; propagation of changes
//! between nodes; the usage flush; and the API's own OpenAPI 3.1 document.
//!
//! Errors are RFC 9457 problem documents like everywhere else in the gateway.

mod auth;
mod doc;
pub mod error;
pub mod manage;
mod paths;
mod routes;
mod state;

pub use auth::token_digest;
pub use manage::Management;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::get;
use state::AdminState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tollgate_proxy::Gateway;

/// Largest admin request body: registered OpenAPI documents can be big, nothing else is.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// The admin router. `token` is the platform admin's bearer token; `manage` is the
/// management plane (absent when the gateway runs without a store).
pub fn router(
    gateway: Gateway,
    token: Option<String>,
    manage: Option<Arc<Management>>,
    own_addrs: Vec<SocketAddr>,
) -> Router {
    let state = AdminState {
        gateway,
        token: token.filter(|t| !t.is_empty()).map(Arc::from),
        manage,
        guard: Arc::default(),
        own_addrs: own_addrs.into(),
    };
    // `layer`, not `route_layer`: a wrong method on a protected path is a 401 to a caller
    // without a token, not a 405 telling them what the path accepts.
    let protected = routes::protected().layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    Router::new()
        .route("/health/live", get(routes::system::live))
        .route("/health/ready", get(routes::system::ready))
        .route("/metrics", get(routes::system::metrics))
        .merge(protected)
        .fallback(routes::system::not_found)
        .layer(middleware::from_fn(routes::system::method_not_allowed))
        .layer(middleware::from_fn(routes::system::request_timeout))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(auth::request_id))
        .with_state(state)
}

/// At most this many admin connections at once: the admin listener shares the process's file
/// descriptors with the data plane, so idle or half-sent connections must not exhaust them.
const MAX_CONNECTIONS: usize = 256;
/// Time for a request head to arrive, and for an idle connection to send its next one.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight admin requests get once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves the admin router on `listener` until `shutdown` fires, then lets in-flight requests
/// finish. `own_addrs`: the gateway's other listeners, as bound (the admin listener's own
/// address is added here). Unlike `axum::serve`, it bounds what a client can hold: connections,
/// the time to send a head, and the time for a whole request.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    token: Option<String>,
    manage: Option<Arc<Management>>,
    mut own_addrs: Vec<SocketAddr>,
    mut shutdown: tollgate_proxy::Shutdown,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    own_addrs.extend(listener.local_addr().ok());
    let app = router(gateway, token, manage, own_addrs);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A connection slot first, as the data plane does: at the cap we stop accepting and
        // the kernel queues; slow clients lose their slot within the header read timeout.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.wait() => break,
        };
        let Some((stream, peer)) = tollgate_proxy::accept(&listener, &mut shutdown).await else {
            break;
        };
        let app = app.clone();
        let builder = builder.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    let mut app = app.clone();
                    async move {
                        tower_service::Service::call(&mut app, req.map(axum::body::Body::new)).await
                    }
                },
            );
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.wait() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
    // Every connection holds a permit until it closes.
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, permits.acquire_many(all)).await;
    Ok(())
}
