//! Consumers (partners and apps), their plans, temporary overrides and API keys. Consumers in
//! the config file are listed and read-only.

use super::{List, PageQuery, check_id, check_if_match, created, etag_of, json_body, rfc3339};
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
use serde_json::Value;
use tollgate_core::Kind;
use tollgate_store::KeyRow;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideBody {
    #[schema(minimum = 0.001, maximum = 1000000.0)]
    pub rate: f64,
    #[schema(minimum = 1, maximum = 10000000)]
    pub burst: u32,
    /// RFC 3339 instant after which the plan applies again.
    #[schema(format = DateTime)]
    pub expires_at: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConsumer {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub id: String,
    pub plan: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub tenant: Option<String>,
}

/// Absent members stay as they are; `"override": null` ends an override.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerPatch {
    pub plan: Option<String>,
    pub scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<OverrideBody>)]
    pub r#override: Option<Option<OverrideBody>>,
}

fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<OverrideBody>>, D::Error> {
    Option::<OverrideBody>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: String,
    /// The key's first characters, to recognise it; never the key.
    pub prefix: Option<String>,
    pub created_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConsumerView {
    pub id: String,
    pub plan: Option<String>,
    pub scopes: Vec<String>,
    pub tenant: Option<String>,
    pub r#override: Option<OverrideBody>,
    pub keys: Vec<KeyView>,
    /// Whether the consumer can get tokens from `POST /oauth2/token` (client credentials).
    pub oauth_client: bool,
    /// Defined in the config file: read-only through this API.
    pub read_only: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewClientSecret {
    /// The OAuth2 client id: the consumer id.
    pub client_id: String,
    /// Shown only in this response; the gateway keeps a keyed hash. A new secret replaces the
    /// previous one.
    pub client_secret: String,
    pub token_endpoint: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewKey {
    pub id: String,
    /// Shown only in this response; the gateway keeps a keyed hash.
    pub key: String,
    pub prefix: String,
}

/// The stored body: exactly the config file's consumer shape (minus keys).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
struct Stored {
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    over: Option<OverrideBody>,
    /// Keyed hash of the OAuth2 client secret (the client id is the consumer id).
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret_hash: Option<String>,
}

fn file_view(id: &str, c: &tollgate_config::Consumer) -> ConsumerView {
    ConsumerView {
        id: id.to_owned(),
        plan: c.plan.clone(),
        scopes: c.scopes.clone(),
        tenant: c.tenant.clone(),
        r#override: c.rate_override.as_ref().map(|o| OverrideBody {
            rate: o.rate,
            burst: o.burst,
            expires_at: humantime::format_rfc3339_seconds(o.expires_at.0).to_string(),
        }),
        keys: c
            .api_keys
            .iter()
            .map(|k| KeyView {
                id: k.id.clone(),
                prefix: None,
                created_at: None,
            })
            .collect(),
        oauth_client: c.client_secret_hash.is_some(),
        read_only: true,
    }
}

fn stored_view(id: &str, body: &Value, keys: &[KeyRow]) -> ApiResult<ConsumerView> {
    let s: Stored = serde_json::from_value(body.clone()).map_err(|e| {
        tracing::error!(consumer = id, error = %e, "stored consumer unreadable");
        ApiError::new(Kind::Internal, "a stored consumer is unreadable")
    })?;
    Ok(ConsumerView {
        id: id.to_owned(),
        plan: s.plan,
        scopes: s.scopes,
        tenant: s.tenant,
        r#override: s.over,
        oauth_client: s.client_secret_hash.is_some(),
        keys: keys
            .iter()
            .filter(|k| k.consumer == id)
            .map(|k| KeyView {
                id: k.id.clone(),
                prefix: Some(k.prefix.clone()),
                created_at: Some(rfc3339(k.created_at)),
            })
            .collect(),
        read_only: false,
    })
}

fn is_file_consumer(s: &AdminState, id: &str) -> bool {
    s.gateway.file_config().config.consumers.contains_key(id)
}

/// The management plane for a change to consumer `id`: platform admins only, and only for
/// consumers the API manages (config-file ones are read-only).
fn for_change<'a>(
    s: &'a AdminState,
    caller: &Caller,
    id: &str,
) -> ApiResult<&'a std::sync::Arc<crate::manage::Management>> {
    caller.platform()?;
    let m = s.manage()?;
    if is_file_consumer(s, id) {
        return Err(ApiError::read_only("consumer"));
    }
    Ok(m)
}

async fn plan_exists(s: &AdminState, plan: &str) -> ApiResult<bool> {
    if s.gateway.file_config().config.plans.contains_key(plan) {
        return Ok(true);
    }
    Ok(s.manage()?.store().get_plan(plan).await?.is_some())
}

async fn tenant_exists(s: &AdminState, tenant: &str) -> ApiResult<bool> {
    if s.gateway.file_config().config.tenants.contains_key(tenant) {
        return Ok(true);
    }
    Ok(s.manage()?.store().get_tenant(tenant).await?.is_some())
}

fn check_scopes(pointer: &str, scopes: &[String], errors: &mut Vec<FieldError>) {
    for (i, sc) in scopes.iter().enumerate() {
        if sc.is_empty()
            || sc.len() > 128
            || !sc
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            errors.push(FieldError::new(
                format!("{pointer}/{i}"),
                "a scope is 1 to 128 visible characters without quotes or backslashes",
            ));
        }
    }
}

fn check_override(o: &OverrideBody, errors: &mut Vec<FieldError>) {
    if !(0.001..=1_000_000.0).contains(&o.rate) {
        errors.push(FieldError::new(
            "/override/rate",
            "requests per second, from 0.001 to 1000000",
        ));
    }
    if o.burst == 0 || o.burst > 10_000_000 {
        errors.push(FieldError::new("/override/burst", "between 1 and 10000000"));
    }
    if tollgate_config::parse_rfc3339(&o.expires_at).is_none() {
        errors.push(FieldError::new(
            "/override/expires_at",
            "an RFC 3339 instant like 2027-01-01T00:00:00Z",
        ));
    }
}

async fn find(s: &AdminState, id: &str) -> ApiResult<ConsumerView> {
    if let Some(c) = s.gateway.file_config().config.consumers.get(id) {
        return Ok(file_view(id, c));
    }
    let store = s.manage()?.store();
    let Some(e) = store.get_consumer(id).await? else {
        return Err(ApiError::not_found("consumer"));
    };
    let keys = store.keys(Some(id)).await?;
    stored_view(id, &e.body, &keys)
}

fn etag(v: &ConsumerView) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Consumers from the config file and the store.
#[utoipa::path(get, path = "/admin/consumers", tag = "consumers", params(PageQuery),
    responses(
        (status = 200, body = crate::doc::ConsumerList),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Q(page): Q<PageQuery>,
) -> ApiResult<Json<List<ConsumerView>>> {
    caller.platform()?;
    let m = s.manage()?;
    let file = s.gateway.file_config();
    let mut all: Vec<ConsumerView> = file
        .config
        .consumers
        .iter()
        .map(|(id, c)| file_view(id, c))
        .collect();
    let keys = m.store().keys(None).await?;
    for e in m
        .store()
        .list_consumers(tollgate_store::Page {
            after: None,
            limit: u32::MAX,
        })
        .await?
    {
        if !file.config.consumers.contains_key(&e.id) {
            all.push(stored_view(&e.id, &e.body, &keys)?);
        }
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(page.paginate(all, |c| &c.id)?))
}

/// Create a consumer on a plan.
#[utoipa::path(post, path = "/admin/consumers", tag = "consumers", request_body = NewConsumer,
    responses(
        (status = 201, body = ConsumerView),
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
    let new: NewConsumer = json_body(&headers, body_in)?;
    // Before the plan is looked up: a plan deleted meanwhile on any node must be seen.
    let write = m.begin_write().await?;
    let mut errors = Vec::new();
    check_id("/id", &new.id, &mut errors);
    check_scopes("/scopes", &new.scopes, &mut errors);
    if let Some(p) = &new.plan
        && !plan_exists(&s, p).await?
    {
        errors.push(FieldError::new("/plan", format!("no plan `{p}`")));
    }
    if let Some(t) = &new.tenant
        && !tenant_exists(&s, t).await?
    {
        errors.push(FieldError::new("/tenant", format!("no tenant `{t}`")));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid("the consumer is not valid", errors));
    }
    if is_file_consumer(&s, &new.id) {
        return Err(ApiError::read_only("consumer"));
    }
    let stored = Stored {
        plan: new.plan,
        scopes: new.scopes,
        tenant: new.tenant,
        over: None,
        client_secret_hash: None,
    };
    let body = serde_json::to_value(&stored).unwrap_or_default();
    m.store()
        .create_consumer(&new.id, &body, &caller.actor())
        .await?;
    m.sync().await?;
    drop(write);
    let v = stored_view(&new.id, &body, &[])?;
    let tag = etag_of(&etag(&v));
    let mut resp = created(format!("/admin/consumers/{}", new.id), Json(v));
    resp.headers_mut().insert(header::ETAG, tag);
    Ok(resp)
}

/// One consumer with its keys (ids and prefixes only).
#[utoipa::path(get, path = "/admin/consumers/{id}", tag = "consumers",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = ConsumerView),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn get(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> ApiResult<Response> {
    caller.platform()?;
    let v = find(&s, &id).await?;
    let tag = etag_of(&etag(&v));
    Ok(([(header::ETAG, tag)], Json(v)).into_response())
}

/// Change plan or scopes, or set (`null`: end) a temporary rate override. Live on every node
/// within 2 s.
#[utoipa::path(patch, path = "/admin/consumers/{id}", tag = "consumers",
    params(("id" = String, Path)), request_body = ConsumerPatch,
    responses(
        (status = 200, body = ConsumerView),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn patch(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
    headers: HeaderMap,
    body_in: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let m = for_change(&s, &caller, &id)?;
    let patch: ConsumerPatch = json_body(&headers, body_in)?;
    let _w = m.begin_write().await?;
    let Some(cur) = m.store().get_consumer(&id).await? else {
        return Err(ApiError::not_found("consumer"));
    };
    let keys = m.store().keys(Some(&id)).await?;
    check_if_match(&headers, &etag(&stored_view(&id, &cur.body, &keys)?))?;
    let mut stored: Stored = serde_json::from_value(cur.body.clone())
        .map_err(|_| ApiError::new(Kind::Internal, "a stored consumer is unreadable"))?;
    let mut errors = Vec::new();
    if let Some(p) = patch.plan {
        if !plan_exists(&s, &p).await? {
            errors.push(FieldError::new("/plan", format!("no plan `{p}`")));
        }
        stored.plan = Some(p);
    }
    if let Some(sc) = patch.scopes {
        check_scopes("/scopes", &sc, &mut errors);
        stored.scopes = sc;
    }
    if let Some(o) = patch.r#override {
        if let Some(o) = &o {
            check_override(o, &mut errors);
        }
        stored.over = o;
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(
            "the change is not valid; nothing changed",
            errors,
        ));
    }
    let body = serde_json::to_value(&stored).unwrap_or_default();
    if !m
        .store()
        .update_consumer(&id, &body, &caller.actor())
        .await?
    {
        return Err(ApiError::not_found("consumer"));
    }
    m.sync().await?;
    let v = stored_view(&id, &body, &keys)?;
    let tag = etag_of(&etag(&v));
    Ok(([(header::ETAG, tag)], Json(v)).into_response())
}

/// Delete a consumer and its keys.
#[utoipa::path(delete, path = "/admin/consumers/{id}", tag = "consumers",
    params(("id" = String, Path)),
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
    let m = for_change(&s, &caller, &id)?;
    m.delete("consumer", async |st| {
        st.delete_consumer(&id, &caller.actor()).await
    })
    .await
}

/// Issue an API key. The key is shown only in this response and works within 2 s.
#[utoipa::path(post, path = "/admin/consumers/{id}/keys", tag = "consumers",
    params(("id" = String, Path)),
    responses(
        (status = 201, body = NewKey),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn create_key(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> ApiResult<Response> {
    let m = for_change(&s, &caller, &id)?;
    let (key, row) = new_key(&s, &id)?;
    {
        let _w = m.begin_write().await?;
        if m.store().get_consumer(&id).await?.is_none() {
            return Err(ApiError::not_found("consumer"));
        }
        m.store().create_key(&row, &caller.actor()).await?;
        m.sync().await?;
    }
    Ok(created(
        format!("/admin/consumers/{id}/keys/{}", row.id),
        Json(NewKey {
            id: row.id,
            prefix: row.prefix,
            key,
        }),
    ))
}

/// Revoke a key: it stops working on every node within 2 s.
#[utoipa::path(delete, path = "/admin/consumers/{id}/keys/{key_id}", tag = "consumers",
    params(("id" = String, Path), ("key_id" = String, Path)),
    responses(
        (status = 204, description = "revoked"),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn revoke_key(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P((id, key_id)): P<(String, String)>,
) -> ApiResult<StatusCode> {
    let m = for_change(&s, &caller, &id)?;
    m.delete("key", async |st| {
        st.revoke_key(&id, &key_id, &caller.actor()).await
    })
    .await
}

/// Makes the consumer an OAuth2 client (client credentials grant at `POST /oauth2/token`) or
/// gives it a new secret; the previous secret stops working within 2 s.
#[utoipa::path(post, path = "/admin/consumers/{id}/client-secret", tag = "consumers",
    params(("id" = String, Path)),
    responses(
        (status = 201, body = NewClientSecret),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn create_client_secret(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> ApiResult<Response> {
    let m = for_change(&s, &caller, &id)?;
    let hasher = hasher(&s)?;
    let secret = super::random_token("cs_")?;
    {
        let _w = m.begin_write().await?;
        let Some(cur) = m.store().get_consumer(&id).await? else {
            return Err(ApiError::not_found("consumer"));
        };
        let mut stored: Stored = serde_json::from_value(cur.body)
            .map_err(|_| ApiError::new(Kind::Internal, "a stored consumer is unreadable"))?;
        stored.client_secret_hash = Some(hasher.encode(secret.as_bytes()));
        let body = serde_json::to_value(&stored).unwrap_or_default();
        m.store()
            .update_consumer(&id, &body, &caller.actor())
            .await?;
        m.sync().await?;
    }
    Ok(created(
        format!("/admin/consumers/{id}"),
        Json(NewClientSecret {
            client_id: id,
            client_secret: secret,
            token_endpoint: "/oauth2/token".to_owned(),
        }),
    ))
}

/// Replaces a key: a new key is issued and the old one revoked in one step. The new key is
/// shown only in this response.
#[utoipa::path(post, path = "/admin/consumers/{id}/keys/{key_id}/rotate", tag = "consumers",
    params(("id" = String, Path), ("key_id" = String, Path)),
    responses(
        (status = 201, body = NewKey),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn rotate_key(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P((id, key_id)): P<(String, String)>,
) -> ApiResult<Response> {
    let m = for_change(&s, &caller, &id)?;
    let (key, row) = new_key(&s, &id)?;
    {
        let _w = m.begin_write().await?;
        if !m
            .store()
            .keys(Some(&id))
            .await?
            .iter()
            .any(|k| k.id == key_id)
        {
            return Err(ApiError::not_found("key"));
        }
        m.store().create_key(&row, &caller.actor()).await?;
        m.store().revoke_key(&id, &key_id, &caller.actor()).await?;
        m.sync().await?;
    }
    Ok(created(
        format!("/admin/consumers/{id}/keys/{}", row.id),
        Json(NewKey {
            id: row.id,
            prefix: row.prefix,
            key,
        }),
    ))
}

/// The gateway's keyed hash, or 409 when the config has none (nothing could be verified).
fn hasher(s: &AdminState) -> ApiResult<tollgate_policy::auth::KeyHasher> {
    s.gateway.snapshot().identity.hasher.clone().ok_or_else(|| {
        ApiError::new(
            Kind::Conflict,
            "the config has no identity.hash_secret_file, so the gateway cannot store secrets",
        )
    })
}

/// A fresh key for `consumer` and the row that stores its keyed hash.
fn new_key(s: &AdminState, consumer: &str) -> ApiResult<(String, KeyRow)> {
    let hasher = hasher(s)?;
    let key = super::random_token("tg_")?;
    let row = KeyRow {
        id: super::random_id("key_")?,
        consumer: consumer.to_owned(),
        hash: hasher.encode(key.as_bytes()),
        prefix: key.chars().take(10).collect(),
        created_at: super::now_ms(),
    };
    Ok((key, row))
}
