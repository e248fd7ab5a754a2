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
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(auth::request_id))
        .with_state(state)
}

/// Serves the admin router on `listener` until `shutdown` fires. `own_addrs`: the gateway's
/// other listeners, as bound (the admin listener's own address is added here).
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    token: Option<String>,
    manage: Option<Arc<Management>>,
    mut own_addrs: Vec<SocketAddr>,
    mut shutdown: tollgate_proxy::Shutdown,
) -> std::io::Result<()> {
    own_addrs.extend(listener.local_addr().ok());
    axum::serve(
        listener,
        router(gateway, token, manage, own_addrs)
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.wait().await })
    .await
}
