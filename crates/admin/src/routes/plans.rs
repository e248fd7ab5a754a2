//! Usage plans: rate, burst and quota per consumer. Plans in the config file are listed and
//! read-only.

use super::{List, PageQuery, check_id, check_if_match, created, etag_of, json_body};
use super::{P, Q};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::state::AdminState;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tollgate_config::{Period, Plan};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PeriodName {
    Hour,
    Day,
    Week,
    Month,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaBody {
    #[schema(minimum = 1, maximum = 1000000000000u64)]
    pub limit: u64,
    pub period: PeriodName,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPlan {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub id: String,
    /// Requests per second, sustained.
    #[schema(minimum = 0.001, maximum = 1000000.0)]
    pub rate: f64,
    /// Requests at once.
    #[schema(minimum = 1, maximum = 10000000)]
    pub burst: u32,
    pub quota: Option<QuotaBody>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanUpdate {
    /// When present, must equal the id in the path.
    pub id: Option<String>,
    #[schema(minimum = 0.001, maximum = 1000000.0)]
    pub rate: f64,
    #[schema(minimum = 1, maximum = 10000000)]
    pub burst: u32,
    pub quota: Option<QuotaBody>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlanView {
    pub id: String,
    pub rate: f64,
    pub burst: u32,
    pub quota: Option<QuotaBody>,
    /// Defined in the config file: read-only through this API.
    pub read_only: bool,
}

fn period_name(p: Period) -> PeriodName {
    match p {
        Period::Hour => PeriodName::Hour,
        Period::Day => PeriodName::Day,
        Period::Week => PeriodName::Week,
        Period::Month => PeriodName::Month,
    }
}

fn view(id: &str, p: &Plan, read_only: bool) -> PlanView {
    PlanView {
        id: id.to_owned(),
        rate: p.rate,
        burst: p.burst,
        quota: p.quota.map(|q| QuotaBody {
            limit: q.limit,
            period: period_name(q.period),
        }),
        read_only,
    }
}

fn validate(rate: f64, burst: u32, quota: &Option<QuotaBody>, errors: &mut Vec<FieldError>) {
    if !(0.001..=1_000_000.0).contains(&rate) {
        errors.push(FieldError::new(
            "/rate",
            "requests per second, from 0.001 to 1000000",
        ));
    }
    if burst == 0 || burst > 10_000_000 {
        errors.push(FieldError::new("/burst", "between 1 and 10000000"));
    }
    if quota
        .as_ref()
        .is_some_and(|q| q.limit == 0 || q.limit > 1_000_000_000_000)
    {
        errors.push(FieldError::new("/quota/limit", "from 1 to 10^12"));
    }
}

/// The stored body: exactly the config file's plan shape, so the overlay reads it as a `Plan`.
fn body(rate: f64, burst: u32, quota: &Option<QuotaBody>) -> Value {
    let mut v = json!({"rate": rate, "burst": burst});
    if let Some(q) = quota {
        v["quota"] = json!({"limit": q.limit, "period": q.period});
    }
    v
}

fn stored_view(id: &str, body: &Value) -> ApiResult<PlanView> {
    let plan: Plan = serde_json::from_value(body.clone()).map_err(|e| {
        tracing::error!(plan = id, error = %e, "stored plan unreadable");
        ApiError::new(tollgate_core::Kind::Internal, "a stored plan is unreadable")
    })?;
    Ok(view(id, &plan, false))
}

async fn find(s: &AdminState, id: &str) -> ApiResult<Option<PlanView>> {
    if let Some(p) = s.gateway.file_config().config.plans.get(id) {
        return Ok(Some(view(id, p, true)));
    }
    match s.manage()?.store().get_plan(id).await? {
        Some(e) => Ok(Some(stored_view(id, &e.body)?)),
        None => Ok(None),
    }
}

fn etag(p: &PlanView) -> Value {
    serde_json::to_value(p).unwrap_or_default()
}

/// Plans from the config file and the store.
#[utoipa::path(get, path = "/admin/plans", tag = "plans", params(PageQuery),
    responses(
        (status = 200, body = crate::doc::PlanList),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Q(page): Q<PageQuery>,
) -> ApiResult<Json<List<PlanView>>> {
    caller.platform()?;
    let m = s.manage()?;
    let file = s.gateway.file_config();
    let mut all: Vec<PlanView> = file
        .config
        .plans
        .iter()
        .map(|(id, p)| view(id, p, true))
        .collect();
    for e in m
        .store()
        .list_plans(tollgate_store::Page {
            after: None,
            limit: u32::MAX,
        })
        .await?
    {
        if !file.config.plans.contains_key(&e.id) {
            all.push(stored_view(&e.id, &e.body)?);
        }
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(page.paginate(all, |p| &p.id)?))
}

/// Create a plan.
#[utoipa::path(post, path = "/admin/plans", tag = "plans", request_body = NewPlan,
    responses(
        (status = 201, body = PlanView),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body_in: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    caller.platform()?;
    let m = s.manage()?;
    let new: NewPlan = json_body(&headers, body_in)?;
    let mut errors = Vec::new();
    check_id("/id", &new.id, &mut errors);
    validate(new.rate, new.burst, &new.quota, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::invalid("the plan is not valid", errors));
    }
    if s.gateway.file_config().config.plans.contains_key(&new.id) {
        return Err(ApiError::read_only("plan"));
    }
    let b = body(new.rate, new.burst, &new.quota);
    {
        let _w = m.begin_write().await?;
        m.store().create_plan(&new.id, &b, &caller.actor()).await?;
        m.sync().await?;
    }
    let v = stored_view(&new.id, &b)?;
    let tag = etag_of(&etag(&v));
    let mut resp = created(format!("/admin/plans/{}", new.id), Json(v));
    resp.headers_mut().insert(header::ETAG, tag);
    Ok(resp)
}

/// One plan.
#[utoipa::path(get, path = "/admin/plans/{plan}", tag = "plans",
    params(("plan" = String, Path)),
    responses(
        (status = 200, body = PlanView),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn get(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> ApiResult<Response> {
    caller.platform()?;
    let v = find(&s, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("plan"))?;
    let tag = etag_of(&etag(&v));
    Ok(([(header::ETAG, tag)], Json(v)).into_response())
}

/// Create or replace a plan; `If-Match` guards against lost updates.
#[utoipa::path(put, path = "/admin/plans/{plan}", tag = "plans",
    params(("plan" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")), request_body = PlanUpdate,
    responses(
        (status = 200, body = PlanView),
        (status = 201, body = PlanView),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn put(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
    headers: HeaderMap,
    body_in: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    caller.platform()?;
    let m = s.manage()?;
    if s.gateway.file_config().config.plans.contains_key(&id) {
        return Err(ApiError::read_only("plan"));
    }
    let upd: PlanUpdate = json_body(&headers, body_in)?;
    let mut errors = Vec::new();
    check_id("/id", &id, &mut errors);
    if upd.id.as_ref().is_some_and(|i| *i != id) {
        errors.push(FieldError::new("/id", "differs from the id in the path"));
    }
    validate(upd.rate, upd.burst, &upd.quota, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::invalid("the plan is not valid", errors));
    }
    let b = body(upd.rate, upd.burst, &upd.quota);
    let is_new = {
        let _w = m.begin_write().await?;
        if let Some(cur) = m.store().get_plan(&id).await? {
            check_if_match(&headers, &etag(&stored_view(&id, &cur.body)?))?;
        } else if headers.contains_key(header::IF_MATCH) {
            return Err(ApiError::new(
                tollgate_core::Kind::PreconditionFailed,
                "If-Match was sent but the plan does not exist",
            ));
        }
        let is_new = m.store().put_plan(&id, &b, &caller.actor()).await?;
        m.sync().await?;
        is_new
    };
    let v = stored_view(&id, &b)?;
    let tag = etag_of(&etag(&v));
    let status = if is_new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, [(header::ETAG, tag)], Json(v)).into_response())
}

/// Delete a plan no consumer uses.
#[utoipa::path(delete, path = "/admin/plans/{plan}", tag = "plans",
    params(("plan" = String, Path)),
    responses(
        (status = 204, description = "deleted"),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> ApiResult<StatusCode> {
    caller.platform()?;
    let m = s.manage()?;
    if s.gateway.file_config().config.plans.contains_key(&id) {
        return Err(ApiError::read_only("plan"));
    }
    let _w = m.begin_write().await?;
    let consumers = m
        .store()
        .list_consumers(tollgate_store::Page {
            after: None,
            limit: u32::MAX,
        })
        .await?;
    if let Some(c) = consumers
        .iter()
        .find(|c| c.body.get("plan").and_then(Value::as_str) == Some(id.as_str()))
    {
        return Err(ApiError::new(
            tollgate_core::Kind::Conflict,
            format!("consumer `{}` is on this plan; move it first", c.id),
        ));
    }
    if !m.store().delete_plan(&id, &caller.actor()).await? {
        return Err(ApiError::not_found("plan"));
    }
    m.sync().await?;
    Ok(StatusCode::NO_CONTENT)
}
