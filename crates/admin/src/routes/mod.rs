//! The admin API's handlers, one module per resource, and what they share: JSON bodies parsed
//! into problems instead of axum's plain-text rejections, cursor pagination, ETags.

pub mod consumers;
pub mod plans;
pub mod system;
pub mod tenants;
pub mod usage;

use crate::error::{ApiError, ApiResult, FieldError};
use crate::state::AdminState;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::routing::{get, post, put};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tollgate_core::Kind;

/// Every route behind the bearer token.
pub fn protected() -> Router<AdminState> {
    Router::new()
        .route("/admin/openapi.json", get(crate::doc::serve))
        .route("/admin/reload", post(system::reload))
        .route("/admin/config", get(system::config_info))
        .route("/admin/audit", get(system::audit))
        .route("/admin/tenants", get(tenants::list).post(tenants::create))
        .route(
            "/admin/tenants/{tenant}",
            get(tenants::get).delete(tenants::delete),
        )
        .route(
            "/admin/tenants/{tenant}/tokens",
            post(tenants::create_token),
        )
        .route("/admin/tenants/{tenant}/apis", get(tenants::list_apis))
        .route(
            "/admin/tenants/{tenant}/apis/{api}",
            put(tenants::put_api)
                .get(tenants::get_api)
                .delete(tenants::delete_api),
        )
        .route("/admin/plans", get(plans::list).post(plans::create))
        .route(
            "/admin/plans/{plan}",
            get(plans::get).put(plans::put).delete(plans::delete),
        )
        .route(
            "/admin/consumers",
            get(consumers::list).post(consumers::create),
        )
        .route(
            "/admin/consumers/{id}",
            get(consumers::get)
                .patch(consumers::patch)
                .delete(consumers::delete),
        )
        .route("/admin/consumers/{id}/keys", post(consumers::create_key))
        .route(
            "/admin/consumers/{id}/keys/{key_id}/rotate",
            post(consumers::rotate_key),
        )
        .route(
            "/admin/consumers/{id}/client-secret",
            post(consumers::create_client_secret),
        )
        .route(
            "/admin/consumers/{id}/keys/{key_id}",
            axum::routing::delete(consumers::revoke_key),
        )
        .route("/admin/usage", get(usage::usage))
        .route("/admin/top-consumers", get(usage::top_consumers))
}

/// `?limit=&cursor=` of every list route.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of a list: `next_cursor` is absent on the last page.
#[derive(Debug, Serialize)]
pub struct List<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> ApiResult<usize> {
        match self.limit {
            None => Ok(100),
            Some(n @ 1..=1000) => Ok(n as usize),
            Some(_) => Err(ApiError::bad_request("`limit` must be between 1 and 1000")),
        }
    }

    pub fn after(&self) -> ApiResult<Option<String>> {
        let Some(c) = &self.cursor else {
            return Ok(None);
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("`cursor` is not a cursor this API handed out"))
    }

    /// One page of `items`, which must be sorted by `key`.
    pub fn paginate<T>(&self, items: Vec<T>, key: impl Fn(&T) -> &str) -> ApiResult<List<T>> {
        let limit = self.limit()?;
        let after = self.after()?;
        let mut page: Vec<T> = items
            .into_iter()
            .filter(|i| after.as_deref().is_none_or(|a| key(i) > a))
            .take(limit + 1)
            .collect();
        let next_cursor = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|i| encode_cursor(key(i)))
        } else {
            None
        };
        Ok(List {
            items: page,
            next_cursor,
        })
    }
}

/// `201 Created` with a `Location` header.
pub fn created(
    location: String,
    body: impl axum::response::IntoResponse,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let mut resp = (axum::http::StatusCode::CREATED, body).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The opaque cursor for "after this id".
pub fn encode_cursor(id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

/// Parses a JSON body, turning every failure into a problem naming where it went wrong.
pub fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    let body = body_bytes(body)?;
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        let ct = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if ct != "application/json" && !ct.ends_with("+json") {
            return Err(ApiError::new(
                Kind::UnsupportedMediaType,
                "send the body as application/json",
            ));
        }
    }
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let de = serde_path_to_error::deserialize::<_, T>(value);
    de.map_err(|e| {
        let pointer = pointer_of(&e.path().to_string());
        ApiError::invalid(
            "the body does not have the expected shape",
            vec![FieldError::new(pointer, e.into_inner().to_string())],
        )
    })
}

/// The raw body, or a problem when it was too large or broken off.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                Kind::PayloadTooLarge,
                format!(
                    "admin request bodies are limited to {} bytes",
                    crate::MAX_BODY_BYTES
                ),
            )
        } else {
            ApiError::bad_request("the request body could not be read")
        }
    })
}

/// serde_path_to_error's `a.b[0]` as a JSON pointer `/a/b/0`.
fn pointer_of(path: &str) -> String {
    if path == "." || path.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    for seg in path.split('.') {
        for part in seg.split('[') {
            let part = part.trim_end_matches(']');
            if part.is_empty() {
                continue;
            }
            out.push('/');
            out.push_str(&part.replace('~', "~0").replace('/', "~1"));
        }
    }
    out
}

/// Ids of tenants, APIs, plans, consumers and keys: safe in paths, logs and metric labels.
pub fn check_id(pointer: &str, id: &str, errors: &mut Vec<FieldError>) {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        errors.push(FieldError::new(
            pointer,
            "ids are 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit",
        ));
    }
}

/// A strong ETag over an entity's representation.
pub fn etag_of(value: &serde_json::Value) -> HeaderValue {
    let d = Sha256::digest(value.to_string().as_bytes());
    let mut s = String::from("\"");
    for b in &d[..12] {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('"');
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Refuses an update whose `If-Match` names another version of the entity.
pub fn check_if_match(headers: &HeaderMap, current: &serde_json::Value) -> ApiResult<()> {
    let Some(want) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let have = etag_of(current);
    let have = have.to_str().unwrap_or("");
    let matches = want
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == have || t.strip_prefix("W/") == Some(have));
    if matches {
        Ok(())
    } else {
        Err(ApiError::new(
            Kind::PreconditionFailed,
            "If-Match does not match the current ETag; read the entity again",
        ))
    }
}

/// `now` in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339 form of a unix-millisecond instant.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A random token: `prefix` + 43 base64url characters (256 bits) from the system CSPRNG.
pub fn random_token(prefix: &str) -> ApiResult<String> {
    let mut buf = [0u8; 32];
    aws_lc_rs::rand::fill(&mut buf)
        .map_err(|_| ApiError::new(Kind::Internal, "no randomness available to make a secret"))?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
    ))
}

/// A short random id: `prefix` + 16 hex characters.
pub fn random_id(prefix: &str) -> ApiResult<String> {
    let mut buf = [0u8; 8];
    aws_lc_rs::rand::fill(&mut buf)
        .map_err(|_| ApiError::new(Kind::Internal, "no randomness available to make an id"))?;
    let mut s = String::from(prefix);
    for b in buf {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

/// `Query` whose rejection is a problem document, not axum's plain text.
pub struct Q<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Q<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))
    }
}

/// `Path` whose rejection is a problem document, not axum's plain text.
pub struct P<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for P<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| P(p.0))
            .map_err(|e| ApiError::bad_request(format!("bad path: {}", e.body_text())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_from_paths() {
        assert_eq!(pointer_of("."), "");
        assert_eq!(pointer_of("quota.limit"), "/quota/limit");
        assert_eq!(pointer_of("scopes[2]"), "/scopes/2");
    }

    #[test]
    fn pagination_walks_every_item_once() {
        let q = |cursor: Option<String>| PageQuery {
            limit: Some(2),
            cursor,
        };
        let items: Vec<String> = (0..5).map(|i| format!("id{i}")).collect();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = q(cursor)
                .paginate(items.clone(), |s| s.as_str())
                .expect("page");
            seen.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, items);
        assert!(
            q(Some("%%%".into()))
                .paginate(items, |s| s.as_str())
                .is_err()
        );
    }

    #[test]
    fn ids() {
        let mut e = Vec::new();
        check_id("/id", "partner-gold_1.x", &mut e);
        assert!(e.is_empty());
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(65)] {
            check_id("/id", bad, &mut e);
        }
        assert_eq!(e.len(), 5);
    }
}
