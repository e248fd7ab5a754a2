//! Usage analytics: exact request counts per consumer, API and minute/hour/day from the
//! store, and the consumers behind the traffic of the last seconds.

use super::rfc3339;
use super::{PageQuery, Q};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AdminState;
use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;
use tollgate_store::{UsageKey, UsageQuery};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Only this consumer.
    pub consumer: Option<String>,
    /// Only this API (its id).
    pub api: Option<String>,
    /// Only this tenant's APIs (a tenant admin sees its own only, whatever this says).
    pub tenant: Option<String>,
    /// Start, RFC 3339 or unix seconds (or milliseconds) (default: 24 h before `to`).
    pub from: Option<String>,
    /// End, exclusive, RFC 3339 or unix seconds (or milliseconds) (default: now).
    pub to: Option<String>,
    /// `minute`, `hour` (default) or `day`.
    pub granularity: Option<Granularity>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageItem {
    /// Start of the bucket (RFC 3339).
    pub start: String,
    pub consumer: String,
    /// The API's tenant: API ids are unique within a tenant only. Empty for usage counted
    /// before usage was kept per tenant.
    pub tenant: String,
    pub api: String,
    pub requests: u64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub throttled: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageList {
    pub items: Vec<UsageItem>,
    pub next_cursor: Option<String>,
}

fn parse_instant(name: &str, v: &str) -> ApiResult<i64> {
    if let Ok(n) = v.trim().parse::<i64>() {
        // Nothing was counted before 1970; refusing it also keeps the window's arithmetic
        // away from i64::MIN.
        if n < 0 {
            return Err(ApiError::bad_request(format!(
                "`{name}` is before 1970-01-01T00:00:00Z"
            )));
        }
        // Unix seconds; 12 digits and more can only mean milliseconds (seconds that large
        // are more than 3000 years away).
        return Ok(if n >= 100_000_000_000 {
            n
        } else {
            n.saturating_mul(1000)
        });
    }
    tollgate_config::parse_rfc3339(v)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| {
            ApiError::bad_request(format!("`{name}` is neither RFC 3339 nor unix seconds"))
        })
}

/// The API ids a tenant admin may see usage of.
fn own_apis(s: &AdminState, tenant: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(t) = s.gateway.file_config().config.tenants.get(tenant) {
        out.extend(t.apis.keys().cloned());
    }
    out.extend(
        s.gateway
            .overlay()
            .apis
            .iter()
            .filter(|a| a.tenant == tenant)
            .map(|a| a.id.clone()),
    );
    out
}

/// Requests, status classes, throttled and latency per consumer, API and period.
#[utoipa::path(get, path = "/admin/usage", tag = "usage", params(UsageParams),
    responses(
        (status = 200, body = UsageList),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn usage(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Q(p): Q<UsageParams>,
) -> ApiResult<Json<UsageList>> {
    let m = s.manage()?;
    // Rows carry their tenant, so a tenant admin's filter is its tenant: another tenant's API
    // of the same id is another row.
    let tenant = match &caller {
        Caller::Platform => p.tenant.clone(),
        Caller::Tenant(t) => {
            if let Some(a) = &p.api
                && !own_apis(&s, t).contains(a)
            {
                return Err(ApiError::not_found("API"));
            }
            Some(t.clone())
        }
    };
    let to_ms = match &p.to {
        Some(v) => parse_instant("to", v)?,
        None => super::now_ms().saturating_add(1),
    };
    let from_ms = match &p.from {
        Some(v) => parse_instant("from", v)?,
        None => to_ms.saturating_sub(86_400_000),
    };
    if from_ms > to_ms {
        return Err(ApiError::bad_request("`from` is after `to`"));
    }
    let bucket_ms = match p.granularity.unwrap_or(Granularity::Hour) {
        Granularity::Minute => 60_000,
        Granularity::Hour => 3_600_000,
        Granularity::Day => 86_400_000,
    };
    // Counts still in this node's memory belong in the answer: exact means exact now.
    if let Err(e) = m.flush_usage().await {
        tracing::warn!(error = %e, "usage flush before a query failed");
    }
    let page = PageQuery {
        limit: p.limit,
        cursor: p.cursor.clone(),
    };
    let limit = page.limit()?;
    let after = page.after()?.map(|c| parse_key(&c)).transpose()?;
    // One row more than the page tells whether another page follows.
    let mut rows = m
        .store()
        .query_usage(&UsageQuery {
            consumer: p.consumer.clone(),
            api: p.api.clone(),
            tenant,
            from_ms,
            to_ms,
            bucket_ms,
            after,
            limit: Some(limit + 1),
        })
        .await?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last()
            .map(|r| super::encode_cursor(&cursor_key(&r.key())))
    } else {
        None
    };
    let items = rows
        .into_iter()
        .map(|r| UsageItem {
            start: rfc3339(r.start_ms),
            latency_p50_ms: r.latency_quantile_ms(0.5).map(round2),
            latency_p99_ms: r.latency_quantile_ms(0.99).map(round2),
            consumer: r.consumer,
            tenant: r.tenant,
            api: r.api,
            requests: r.requests,
            status_2xx: r.status_2xx,
            status_4xx: r.status_4xx,
            status_5xx: r.status_5xx,
            throttled: r.throttled,
        })
        .collect();
    Ok(Json(UsageList { items, next_cursor }))
}

/// A cursor names the last row of its page: start (20 digits), consumer, tenant and API,
/// NUL-separated (ids never hold a NUL).
fn cursor_key(k: &UsageKey) -> String {
    format!(
        "{:020}\u{0}{}\u{0}{}\u{0}{}",
        k.start_ms, k.consumer, k.tenant, k.api
    )
}

fn parse_key(c: &str) -> ApiResult<UsageKey> {
    let parts: Vec<&str> = c.split('\u{0}').collect();
    match parts[..] {
        [start, consumer, tenant, api]
            if start.len() == 20 && start.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Ok(UsageKey {
                start_ms: start.parse().map_err(|_| bad_cursor())?,
                consumer: consumer.to_string(),
                tenant: tenant.to_string(),
                api: api.to_string(),
            })
        }
        _ => Err(bad_cursor()),
    }
}

fn bad_cursor() -> ApiError {
    ApiError::bad_request("`cursor` is not a cursor this API handed out")
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopParams {
    /// How far back, e.g. `60s`, `5m` (default 60s, at most 1h).
    pub window: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TopItem {
    pub consumer: String,
    pub requests: u64,
    pub rate_per_second: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TopList {
    pub window_seconds: u64,
    pub items: Vec<TopItem>,
    pub next_cursor: Option<String>,
}

/// Consumers by request rate over the recent window, highest first (this node's view).
#[utoipa::path(get, path = "/admin/top-consumers", tag = "usage", params(TopParams),
    responses(
        (status = 200, body = TopList),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn top_consumers(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Q(p): Q<TopParams>,
) -> ApiResult<Json<TopList>> {
    caller.platform()?;
    let window = match p.window.as_deref().map(str::trim) {
        None | Some("") => Duration::from_secs(60),
        Some(w) => match w.parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => humantime::parse_duration(w)
                .map_err(|_| ApiError::bad_request("`window` is a duration like 60s or 5m"))?,
        },
    };
    if window < Duration::from_secs(1) || window > Duration::from_secs(3600) {
        return Err(ApiError::bad_request("`window` must be between 1s and 1h"));
    }
    let page = PageQuery {
        limit: p.limit,
        cursor: p.cursor.clone(),
    };
    let secs = window.as_secs();
    // Pages follow the ranking; a later page is ranked afresh, as a live view is.
    let ranked: Vec<(String, TopItem)> = s
        .gateway
        .usage()
        .top_consumers(window)
        .into_iter()
        .enumerate()
        .map(|(rank, (c, n))| {
            (
                format!("{rank:010}"),
                TopItem {
                    consumer: c.to_string(),
                    requests: n,
                    rate_per_second: round2(n as f64 / secs as f64),
                },
            )
        })
        .collect();
    let list = page.paginate(ranked, |(k, _)| k)?;
    Ok(Json(TopList {
        window_seconds: secs,
        items: list.items.into_iter().map(|(_, i)| i).collect(),
        next_cursor: list.next_cursor,
    }))
}
