//! Tollgate's admin listener: unauthenticated health and Prometheus metrics, and bearer-token
//! protected admin routes (config reload now; the management API grows here).
//!
//! Errors are RFC 9457 problem documents like everywhere else in the gateway.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use tollgate_core::{GatewayError, Kind};
use tollgate_proxy::Gateway;

#[derive(Clone)]
struct AdminState {
    gateway: Gateway,
    /// `None` when the token variable is unset: protected routes then refuse everyone.
    token: Option<Arc<str>>,
}

/// A problem response for the admin API.
struct Problem(GatewayError);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let resp = self.0.to_response("-");
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, axum::body::Body::from(body))
    }
}

/// The admin router. `token` is the platform admin's bearer token.
pub fn router(gateway: Gateway, token: Option<String>) -> Router {
    let state = AdminState {
        gateway,
        token: token.filter(|t| !t.is_empty()).map(Arc::from),
    };
    let protected = Router::new()
        .route("/admin/reload", post(reload))
        .route("/admin/config", get(config_info))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route(
            "/health/live",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(protected)
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Problem {
    Problem(GatewayError::new(
        Kind::NotFound,
        "no admin route at this path",
    ))
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    let snap = s.gateway.snapshot();
    Json(serde_json::json!({"status": "ready", "config_generation": snap.generation}))
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        s.gateway.metrics().encode(),
    )
}

async fn reload(State(s): State<AdminState>) -> Result<Json<serde_json::Value>, Problem> {
    let gw = s.gateway.clone();
    let result = tokio::task::spawn_blocking(move || gw.reload())
        .await
        .map_err(|e| {
            Problem(
                GatewayError::new(Kind::Internal, "reload task failed").with_cause(e.to_string()),
            )
        })?;
    match result {
        Ok(generation) => Ok(Json(
            serde_json::json!({"status": "reloaded", "config_generation": generation}),
        )),
        Err(e) => {
            let problems: Vec<String> = match &e {
                tollgate_proxy::ReloadError::Config(tollgate_config::ConfigError::Invalid {
                    problems,
                    ..
                }) => problems.iter().map(ToString::to_string).collect(),
                other => vec![other.to_string()],
            };
            Err(Problem(
                GatewayError::new(
                    Kind::BadRequest,
                    format!("config refused; the running config stays: {e}"),
                )
                .with_extension("errors", problems.into()),
            ))
        }
    }
}

async fn config_info(State(s): State<AdminState>) -> impl IntoResponse {
    let snap = s.gateway.snapshot();
    Json(serde_json::json!({
        "config_generation": snap.generation,
        "path": snap.loaded.source_path.display().to_string(),
        "routes": {"public": snap.public.len(), "tls": snap.tls.len()},
    }))
}

async fn require_token(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = match (&s.token, presented) {
        (Some(want), Some(got)) => constant_time_eq(want.as_bytes(), got.as_bytes()),
        _ => false,
    };
    if ok {
        return next.run(req).await;
    }
    let mut resp = Problem(GatewayError::new(
        Kind::Unauthorized,
        "this admin route needs `Authorization: Bearer <token>`",
    ))
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
    );
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    resp
}

/// Compares without an early exit, so response timing does not reveal a token prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the admin router on `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    token: Option<String>,
    mut shutdown: tollgate_proxy::Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router(gateway, token))
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
