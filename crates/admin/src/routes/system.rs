//! Health, metrics, config reload and what the running config is.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AdminState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};
use tollgate_core::{GatewayError, Kind};
use tollgate_proxy::metrics::Exposition;

pub async fn not_found() -> ApiError {
    ApiError::new(Kind::NotFound, "no admin route at this path")
}

/// How long an admin request, body included, may take.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Answers 408 when a request takes longer than [`REQUEST_TIMEOUT`]: a client sending its body
/// a byte a minute must not hold a connection and a handler forever.
pub async fn request_timeout(req: axum::extract::Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            Kind::RequestTimeout,
            format!(
                "the request took longer than {}s",
                REQUEST_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    }
}

/// The router answers a known path's wrong method with a bare 405; the admin API's errors are
/// problem documents, this one included (with its `Allow`).
pub async fn method_not_allowed(req: axum::extract::Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status() != StatusCode::METHOD_NOT_ALLOWED
        || resp.headers().contains_key(header::CONTENT_TYPE)
    {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let detail = match allow.as_ref().and_then(|a| a.to_str().ok()) {
        Some(a) => format!("this method is not allowed here; allowed: {a}"),
        None => "this method is not allowed here".to_owned(),
    };
    let mut e = GatewayError::new(Kind::MethodNotAllowed, detail);
    if let Some(a) = allow {
        e = e.with_header(header::ALLOW, a);
    }
    ApiError(e).into_response()
}

pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(s): State<AdminState>) -> Json<Value> {
    let snap = s.gateway.snapshot();
    Json(json!({"status": "ready", "config_generation": snap.generation}))
}

pub async fn metrics(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Exposition::negotiate(accept);
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            ),
            (header::VARY, HeaderValue::from_static("accept")),
        ],
        s.gateway.metrics().encode_as(format),
    )
}

/// Re-read the config file; the old config stays when the new one is refused.
#[utoipa::path(post, path = "/admin/reload", tag = "system",
    responses(
        (status = 200, description = "reloaded", body = crate::doc::Reloaded),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn reload(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    caller.platform()?;
    let gw = s.gateway.clone();
    let result = tokio::task::spawn_blocking(move || gw.reload())
        .await
        .map_err(|e| {
            ApiError(
                tollgate_core::GatewayError::new(Kind::Internal, "reload task failed")
                    .with_cause(e.to_string()),
            )
        })?;
    match result {
        Ok(generation) => Ok(Json(
            json!({"status": "reloaded", "config_generation": generation}),
        )),
        Err(e) => {
            let problems: Vec<String> = match &e {
                tollgate_proxy::ReloadError::Config(tollgate_config::ConfigError::Invalid {
                    problems,
                    ..
                }) => problems.iter().map(ToString::to_string).collect(),
                other => vec![other.to_string()],
            };
            Err(ApiError(
                tollgate_core::GatewayError::new(
                    Kind::BadRequest,
                    format!("config refused; the running config stays: {e}"),
                )
                .with_extension("errors", problems.into()),
            ))
        }
    }
}

/// The running config's generation, file and route counts.
#[utoipa::path(get, path = "/admin/config", tag = "system",
    responses(
        (status = 200, description = "the running config", body = Object),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn config_info(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    caller.platform()?;
    let snap = s.gateway.snapshot();
    Ok(Json(json!({
        "config_generation": snap.generation,
        "path": snap.loaded.source_path.display().to_string(),
        "routes": {"public": snap.public.len(), "tls": snap.tls.len()},
    })))
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AuditItem {
    pub id: String,
    /// When (RFC 3339).
    pub at: String,
    /// Who: `platform-admin` or `tenant-admin:<tenant>`.
    pub actor: String,
    /// What, e.g. `consumer.update`.
    pub action: String,
    pub target: String,
    #[schema(value_type = Object)]
    pub detail: Value,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AuditList {
    pub items: Vec<AuditItem>,
    pub next_cursor: Option<String>,
}

/// Every change made through the admin API, oldest first.
#[utoipa::path(get, path = "/admin/audit", tag = "system", params(super::PageQuery),
    responses(
        (status = 200, body = AuditList),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn audit(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    super::Q(page): super::Q<super::PageQuery>,
) -> ApiResult<Json<AuditList>> {
    caller.platform()?;
    let m = s.manage()?;
    let limit = page.limit()?;
    let after = page.after()?;
    let mut rows = m
        .store()
        .audit(tollgate_store::Page {
            after: after.as_deref(),
            limit: limit as u32 + 1,
        })
        .await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if more {
        rows.last().map(|r| super::encode_cursor(&r.id))
    } else {
        None
    };
    Ok(Json(AuditList {
        items: rows
            .into_iter()
            .map(|r| AuditItem {
                at: super::rfc3339(r.at_ms),
                id: r.id,
                actor: r.actor,
                action: r.action,
                target: r.target,
                // Always an object, as documented.
                detail: if r.detail.is_object() {
                    r.detail
                } else {
                    json!({ "value": r.detail })
                },
            })
            .collect(),
        next_cursor,
    }))
}
