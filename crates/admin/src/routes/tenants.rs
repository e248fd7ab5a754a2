//! Tenants, their admin tokens, and the APIs they register as OpenAPI documents.

use super::{
    List, PageQuery, body_bytes, check_id, check_if_match, created, etag_of, json_body, rfc3339,
};
use super::{P, Q};
use crate::auth::{Caller, token_digest};
use crate::error::{ApiError, ApiResult, FieldError};
use crate::manage::{Management, import_api, is_yaml, with_api};
use crate::state::AdminState;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tollgate_core::Kind;
use tollgate_store::Tenant;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    /// Defined in the config file: read-only through this API.
    pub read_only: bool,
    pub created_at: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub id: String,
    pub name: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewToken {
    pub id: String,
    /// Shown only in this response; stored as a digest.
    pub token: String,
    pub tenant: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RouteView {
    pub id: String,
    pub methods: Vec<String>,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiView {
    pub tenant: String,
    pub id: String,
    pub read_only: bool,
    pub upstream: Option<String>,
    pub routes: Vec<RouteView>,
    pub updated_at: Option<String>,
}

fn file_tenant(s: &AdminState, id: &str) -> Option<TenantView> {
    let file = s.gateway.file_config();
    file.config.tenants.get(id).map(|t| TenantView {
        id: id.to_owned(),
        name: t.name.clone().unwrap_or_else(|| id.to_owned()),
        read_only: true,
        created_at: None,
    })
}

/// The API as the config file defines it, if it does (read-only through the admin API).
fn file_api(s: &AdminState, tenant: &str, api: &str) -> Option<tollgate_config::Api> {
    s.gateway
        .file_config()
        .config
        .tenants
        .get(tenant)
        .and_then(|t| t.apis.get(api))
        .cloned()
}

fn view(t: Tenant) -> TenantView {
    TenantView {
        id: t.id,
        name: t.name,
        read_only: false,
        created_at: Some(rfc3339(t.created_at)),
    }
}

/// The tenant, from the file or the store; 404 when neither has it.
async fn find_tenant(s: &AdminState, m: &Management, id: &str) -> ApiResult<TenantView> {
    if let Some(t) = file_tenant(s, id) {
        return Ok(t);
    }
    m.store()
        .get_tenant(id)
        .await?
        .map(view)
        .ok_or_else(|| ApiError::not_found("tenant"))
}

/// Store rows hang off a tenant row; a tenant from the config file gets one the first time
/// something is stored for it.
async fn ensure_stored(m: &Management, t: &TenantView, actor: &str) -> ApiResult<()> {
    if !t.read_only {
        return Ok(());
    }
    let row = Tenant {
        id: t.id.clone(),
        name: t.name.clone(),
        created_at: super::now_ms(),
    };
    match m.store().create_tenant(&row, actor).await {
        Ok(()) | Err(tollgate_store::StoreError::Conflict) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Tenants from the config file and the store.
#[utoipa::path(get, path = "/admin/tenants", tag = "tenants", params(PageQuery),
    responses(
        (status = 200, body = crate::doc::TenantList),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Q(page): Q<PageQuery>,
) -> ApiResult<Json<List<TenantView>>> {
    caller.platform()?;
    let m = s.manage()?;
    let file = s.gateway.file_config();
    let mut all: Vec<TenantView> = file
        .config
        .tenants
        .keys()
        .filter_map(|id| file_tenant(&s, id))
        .collect();
    for t in m
        .store()
        .list_tenants(tollgate_store::Page {
            after: None,
            limit: u32::MAX,
        })
        .await?
    {
        if !file.config.tenants.contains_key(&t.id) {
            all.push(view(t));
        }
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(page.paginate(all, |t| &t.id)?))
}

/// Create a tenant.
#[utoipa::path(post, path = "/admin/tenants", tag = "tenants", request_body = NewTenant,
    responses(
        (status = 201, body = TenantView),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    caller.platform()?;
    let m = s.manage()?;
    let new: NewTenant = json_body(&headers, body)?;
    let mut errors = Vec::new();
    check_id("/id", &new.id, &mut errors);
    let name = new.name.unwrap_or_else(|| new.id.clone());
    if name.len() > 200 {
        errors.push(FieldError::new("/name", "at most 200 characters"));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid("the tenant is not valid", errors));
    }
    if file_tenant(&s, &new.id).is_some() {
        return Err(ApiError::read_only("tenant"));
    }
    let t = Tenant {
        id: new.id,
        name,
        created_at: super::now_ms(),
    };
    {
        let _w = m.begin_write().await?;
        m.store().create_tenant(&t, &caller.actor()).await?;
        m.sync().await?;
    }
    let location = format!("/admin/tenants/{}", t.id);
    Ok(created(location, Json(view(t))))
}

/// One tenant. A tenant admin may read its own.
#[utoipa::path(get, path = "/admin/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path)),
    responses(
        (status = 200, body = TenantView),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn get(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P(tenant): P<String>,
) -> ApiResult<Json<TenantView>> {
    caller.tenant(&tenant)?;
    let m = s.manage()?;
    Ok(Json(find_tenant(&s, m, &tenant).await?))
}

/// Delete a tenant with its registered APIs and admin tokens.
#[utoipa::path(delete, path = "/admin/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path)),
    responses(
        (status = 204, description = "deleted"),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P(tenant): P<String>,
) -> ApiResult<StatusCode> {
    caller.platform()?;
    let m = s.manage()?;
    if file_tenant(&s, &tenant).is_some() {
        return Err(ApiError::read_only("tenant"));
    }
    m.delete("tenant", async |st| {
        st.delete_tenant(&tenant, &caller.actor()).await
    })
    .await
}

/// Issue a tenant admin token. The token is shown only in this response.
#[utoipa::path(post, path = "/admin/tenants/{tenant}/tokens", tag = "tenants",
    params(("tenant" = String, Path)),
    responses(
        (status = 201, body = NewToken),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn create_token(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P(tenant): P<String>,
) -> ApiResult<Response> {
    caller.platform()?;
    let m = s.manage()?;
    let t = find_tenant(&s, m, &tenant).await?;
    ensure_stored(m, &t, &caller.actor()).await?;
    let token = super::random_token("tgt_")?;
    let id = super::random_id("tok_")?;
    m.store()
        .create_tenant_token(&tenant, &id, &token_digest(&token), &caller.actor())
        .await?;
    Ok(created(
        format!("/admin/tenants/{tenant}/tokens/{id}"),
        Json(NewToken { id, token, tenant }),
    ))
}

fn api_view(
    tenant: &str,
    id: &str,
    api: &tollgate_config::Api,
    read_only: bool,
    updated_at: Option<i64>,
) -> ApiView {
    ApiView {
        tenant: tenant.to_owned(),
        id: id.to_owned(),
        read_only,
        upstream: api.upstream.clone(),
        routes: api
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| RouteView {
                // The name logs and metrics use (the compiler's default when there is no id).
                id: r.id.clone().unwrap_or_else(|| format!("{tenant}/{id}/{i}")),
                methods: r.methods.clone(),
                path: r.path.clone(),
            })
            .collect(),
        updated_at: updated_at.map(rfc3339),
    }
}

/// The tenant's APIs: from the config file (read-only) and registered ones.
#[utoipa::path(get, path = "/admin/tenants/{tenant}/apis", tag = "apis",
    params(("tenant" = String, Path), PageQuery),
    responses(
        (status = 200, body = crate::doc::ApiList),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn list_apis(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P(tenant): P<String>,
    Q(page): Q<PageQuery>,
) -> ApiResult<Json<List<ApiView>>> {
    caller.tenant(&tenant)?;
    let m = s.manage()?;
    find_tenant(&s, m, &tenant).await?;
    let file = s.gateway.file_config();
    let mut all = Vec::new();
    if let Some(t) = file.config.tenants.get(&tenant) {
        for (id, api) in &t.apis {
            all.push(api_view(&tenant, id, api, true, None));
        }
    }
    // When each registered API was last put, as the PUT answered: the store has it, the
    // running overlay does not. Page by page, so no tenant has more than the store hands out.
    let mut updated = std::collections::HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = tollgate_store::Page {
            after: after.as_deref(),
            limit: tollgate_store::MAX_PAGE,
        };
        let docs = m.store().list_apis(Some(&tenant), page).await?;
        let full = docs.len() == tollgate_store::MAX_PAGE as usize;
        after = docs.last().map(|d| d.id.clone());
        updated.extend(docs.into_iter().map(|d| (d.id, d.updated_at)));
        if !full {
            break;
        }
    }
    let overlay = s.gateway.overlay();
    for a in overlay.apis.iter().filter(|a| a.tenant == tenant) {
        let at = updated.get(&a.id).copied();
        all.push(api_view(&tenant, &a.id, &a.api, false, at));
    }
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(page.paginate(all, |a| &a.id)?))
}

/// Register or replace an API from its OpenAPI 3.0/3.1 document (JSON, or YAML with
/// `Content-Type: application/yaml`). Live on every node within 2 s.
#[utoipa::path(put, path = "/admin/tenants/{tenant}/apis/{api}", tag = "apis",
    params(("tenant" = String, Path), ("api" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    request_body(description = "an OpenAPI 3.0 or 3.1 document with x-tollgate extensions (docs/openapi-extensions.md)",
        content((Object = "application/json"), (String = "application/yaml"))),
    responses(
        (status = 200, description = "replaced", body = ApiView),
        (status = 201, description = "registered", body = ApiView),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn put_api(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P((tenant, api)): P<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    caller.tenant(&tenant)?;
    let m = s.manage()?.clone();
    let t = find_tenant(&s, &m, &tenant).await?;
    let body = body_bytes(body)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let yaml = is_yaml(&content_type);
    let base = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !yaml && base != "application/json" && !base.ends_with("+json") {
        return Err(ApiError::new(
            Kind::UnsupportedMediaType,
            "send the OpenAPI document as application/json or application/yaml",
        ));
    }
    let mut errors = Vec::new();
    check_id("", &api, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::invalid("the API id is not valid", errors));
    }
    if file_api(&s, &tenant, &api).is_some() {
        return Err(ApiError::read_only("API"));
    }
    let imported = import_api(&tenant, &api, &body, yaml).map_err(|errors| {
        ApiError::invalid(
            "the document is not a valid API registration; nothing changed",
            errors,
        )
    })?;
    let urls: Vec<String> = imported
        .upstream
        .targets
        .iter()
        .map(|t| t.url.clone())
        .collect();
    let own = s.own_addrs.clone();
    // Resolved as the upstream client will resolve it (getaddrinfo: `127.1`, `0x7f000001`,
    // `localhost.` and names are all loopback to it), which blocks.
    let own_target = tokio::task::spawn_blocking(move || {
        urls.into_iter().find(|u| targets_own_listener(u, &own))
    })
    .await
    .ok()
    .flatten();
    if let Some(url) = own_target {
        return Err(ApiError::invalid(
            "the document is not a valid API registration; nothing changed",
            vec![FieldError::new(
                "/x-tollgate/upstream",
                format!(
                    "`{url}` is one of this gateway's own listeners: a registered API may not \
                     expose the admin API or route through the gateway again"
                ),
            )],
        ));
    }
    let view = api_view(&tenant, &api, &imported.api, false, Some(super::now_ms()));

    let _w = m.begin_write().await?;
    if let Some(existing) = m.store().get_api(&tenant, &api).await? {
        check_if_match(&headers, &serde_json::Value::String(existing.document))?;
    }
    let candidate = with_api(&s.gateway.overlay(), &tenant, &api, Some(imported));
    // A path another API serves stays that API's, whatever the methods: sharing it would let
    // one tenant answer (or shadow) requests meant for another.
    if let Ok(merged) = candidate.apply(&s.gateway.file_config()) {
        let errors = path_clashes(&merged.config, &tenant, &api);
        if !errors.is_empty() {
            return Err(ApiError::invalid(
                "the API's paths clash with another API's; nothing changed",
                errors,
            ));
        }
    }
    let gw = s.gateway.clone();
    let checked = tokio::task::spawn_blocking(move || gw.check_overlay(&candidate))
        .await
        .map_err(|e| {
            ApiError(
                tollgate_core::GatewayError::new(Kind::Internal, "check failed")
                    .with_cause(e.to_string()),
            )
        })?;
    checked.map_err(|problems| {
        let mut errors: Vec<FieldError> = Vec::new();
        for p in problems {
            let e = FieldError::new("/paths", format!("{}: {}", p.key_path, p.message));
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
        ApiError::invalid(
            "the API clashes with the running configuration; nothing changed",
            errors,
        )
    })?;
    let document = String::from_utf8_lossy(&body).into_owned();
    let doc = tollgate_store::ApiDoc {
        tenant: tenant.clone(),
        id: api.clone(),
        document: document.clone(),
        content_type: if yaml {
            "application/yaml".into()
        } else {
            "application/json".into()
        },
        updated_at: super::now_ms(),
    };
    ensure_stored(&m, &t, &caller.actor()).await?;
    let is_new = m.store().put_api(&doc, &caller.actor()).await?;
    m.sync().await?;
    let status = if is_new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut resp = (status, Json(view)).into_response();
    resp.headers_mut()
        .insert(header::ETAG, etag_of(&serde_json::Value::String(document)));
    if is_new && let Ok(v) = HeaderValue::from_str(&format!("/admin/tenants/{tenant}/apis/{api}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// The registered document as submitted (config-file APIs: their routes).
#[utoipa::path(get, path = "/admin/tenants/{tenant}/apis/{api}", tag = "apis",
    params(("tenant" = String, Path), ("api" = String, Path)),
    responses(
        (status = 200, description = "the stored OpenAPI document", content((Object = "application/json"), (String = "application/yaml"))),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn get_api(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P((tenant, api)): P<(String, String)>,
) -> ApiResult<Response> {
    caller.tenant(&tenant)?;
    let m = s.manage()?;
    if let Some(a) = file_api(&s, &tenant, &api) {
        return Ok(Json(api_view(&tenant, &api, &a, true, None)).into_response());
    }
    let Some(doc) = m.store().get_api(&tenant, &api).await? else {
        return Err(ApiError::not_found("API"));
    };
    let etag = etag_of(&serde_json::Value::String(doc.document.clone()));
    let ct = HeaderValue::from_str(&doc.content_type)
        .unwrap_or(HeaderValue::from_static("application/json"));
    Ok((
        [(header::CONTENT_TYPE, ct), (header::ETAG, etag)],
        doc.document,
    )
        .into_response())
}

/// Unregister an API: its routes stop on every node within 2 s.
#[utoipa::path(delete, path = "/admin/tenants/{tenant}/apis/{api}", tag = "apis",
    params(("tenant" = String, Path), ("api" = String, Path)),
    responses(
        (status = 204, description = "deleted"),
        crate::doc::AdminErrors,
    ),
    security(("bearer" = [])))]
pub async fn delete_api(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    P((tenant, api)): P<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.tenant(&tenant)?;
    let m: Arc<Management> = s.manage()?.clone();
    if file_api(&s, &tenant, &api).is_some() {
        return Err(ApiError::read_only("API"));
    }
    m.delete("API", async |st| {
        st.delete_api(&tenant, &api, &caller.actor()).await
    })
    .await
}

/// Each path of `tenant/api` that another API of `cfg` serves (see [`crate::paths`]).
fn path_clashes(cfg: &tollgate_config::Config, tenant: &str, api: &str) -> Vec<FieldError> {
    match cfg.tenants.get(tenant).and_then(|t| t.apis.get(api)) {
        Some(mine) => crate::paths::TakenPaths::of(cfg, Some((tenant, api))).clashes(mine),
        None => Vec::new(),
    }
}

/// Whether `url` (`http://host:port`) reaches one of the gateway's listeners, with the host
/// resolved as the upstream client resolves it. Blocking. A name that does not resolve now is
/// let through (the registration is not the place to require DNS), and one resolved again
/// later may point elsewhere: this keeps tenants from the gateway's own listeners, it is not
/// an egress policy.
fn targets_own_listener(url: &str, own: &[std::net::SocketAddr]) -> bool {
    use std::net::{IpAddr, ToSocketAddrs};
    let Ok(uri) = url.parse::<axum::http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let port = uri.port_u16().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(resolved) = (host, port).to_socket_addrs() else {
        return false;
    };
    // What a connection to `target` reaches on this machine, for a listener bound to `l`.
    let reaches = |target: IpAddr, l: IpAddr| {
        let local = target.is_loopback() || target.is_unspecified();
        let same_family = target.is_ipv4() == l.is_ipv4();
        // `::` usually accepts IPv4 as well (dual stack); `0.0.0.0` and loopback do not mix.
        let any = l.is_unspecified() && (same_family || l.is_ipv6());
        target == l || (local && (any || (l.is_loopback() && same_family)))
    };
    resolved.into_iter().any(|t| {
        own.iter()
            .any(|o| o.port() == port && reaches(t.ip().to_canonical(), o.ip().to_canonical()))
    })
}

#[cfg(test)]
mod tests {
    use super::targets_own_listener;

    #[test]
    fn registered_upstreams_may_not_be_the_gateways_own_listeners() {
        let own: Vec<std::net::SocketAddr> = vec![
            "127.0.0.1:9901".parse().expect("addr"),
            "0.0.0.0:8080".parse().expect("addr"),
            "[::1]:8443".parse().expect("addr"),
        ];
        for url in [
            "http://127.0.0.1:9901",
            "http://localhost:9901/",
            "http://127.0.0.2:9901",
            "http://0.0.0.0:9901",
            "http://127.0.0.1:8080",
            "http://[::1]:8443",
            "http://[::ffff:127.0.0.1]:9901",
            // Spellings the resolver reads as loopback.
            "http://127.1:9901",
            "http://2130706433:9901",
            "http://0x7f000001:9901",
            "http://127.000.000.001:9901",
            "http://0:9901",
        ] {
            assert!(targets_own_listener(url, &own), "{url}");
        }
        for url in [
            "http://127.0.0.1:9105",
            "http://10.0.0.5:9901",
            "http://backend.invalid:9901",
            "http://127.0.0.1:8443",
            "http://[::1]:8080",
        ] {
            assert!(!targets_own_listener(url, &own), "{url}");
        }
    }
}
