//! The gateway's OAuth2 token endpoint (RFC 6749 §4.4, client credentials) and its JWK Set.
//!
//! Clients authenticate with HTTP Basic or form fields (§2.3.1, never both); the secret is
//! checked against its keyed hash in constant time. A client gets only scopes it was granted.
//! Errors are RFC 6749 §5.2 JSON, not problem documents, because OAuth clients parse those.

use super::identity::Identity;
use base64::Engine;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, PRAGMA, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use subtle::ConstantTimeEq;

/// Token requests are a few form fields; anything larger is not one.
pub const MAX_TOKEN_REQUEST_BYTES: usize = 16 * 1024;

fn json(status: StatusCode, body: serde_json::Value) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(body.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response<Bytes> {
    json(
        status,
        serde_json::json!({"error": code, "error_description": description}),
    )
}

/// A token request whose body could not be read (broken chunked framing, fewer bytes than its
/// `Content-Length`): the client's error, in RFC 6749 §5.2's form like the others.
pub fn unreadable_body() -> Response<Bytes> {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "the request body could not be read",
    )
}

/// A 401 whichever way the client authenticated: RFC 6749 §5.2 asks for the challenge of the
/// scheme a Basic client used, and RFC 9110 §15.5.2 for one on every 401, so a client that
/// sent form fields is told that Basic is accepted too.
fn invalid_client() -> Response<Bytes> {
    let mut r = oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "client authentication failed",
    );
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"tollgate\""),
    );
    r
}

/// `id:secret` from a Basic header; both parts are form-urlencoded per RFC 6749 §2.3.1.
fn basic_credentials(v: &HeaderValue) -> Option<(String, String)> {
    let s = v.to_str().ok()?;
    let (scheme, b64) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (id, secret) = raw.split_once(':')?;
    let decode = |x: &str| -> String {
        form_urlencoded::parse(format!("v={x}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((decode(id), decode(secret)))
}

/// Answers `POST /oauth2/token`.
pub fn token(
    identity: &Identity,
    authorization: Option<&HeaderValue>,
    content_type: Option<&HeaderValue>,
    body: &[u8],
) -> Response<Bytes> {
    let Some(issuer) = identity.token_issuer.as_ref() else {
        return oauth_error(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "this gateway issues no tokens",
        );
    };
    let form_ok = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_ok {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send application/x-www-form-urlencoded",
        );
    }
    let mut grant_type = None;
    let mut scope = None;
    let mut form_id = None;
    let mut form_secret = None;
    for (k, v) in form_urlencoded::parse(body) {
        // RFC 6749 §3.1: a parameter sent without a value is as if it were not sent.
        if v.is_empty() {
            continue;
        }
        let slot = match k.as_ref() {
            "grant_type" => &mut grant_type,
            "scope" => &mut scope,
            "client_id" => &mut form_id,
            "client_secret" => &mut form_secret,
            _ => continue,
        };
        // RFC 6749 §3.1: parameters must not repeat.
        if slot.replace(v.into_owned()).is_some() {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "a parameter is repeated",
            );
        }
    }
    match grant_type.as_deref() {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is supported",
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            );
        }
    }
    let basic = authorization.and_then(basic_credentials);
    let (client_id, secret) = match (basic, form_id, form_secret) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "use one client authentication method, not two",
            );
        }
        (Some((id, secret)), None, None) => (id, secret),
        (None, Some(id), Some(secret)) => (id, secret),
        _ => return invalid_client(),
    };
    let (Some(hasher), Some(stored), Some(consumer)) = (
        identity.hasher.as_ref(),
        identity.client_secrets.get(&client_id),
        identity.consumer(&client_id),
    ) else {
        return invalid_client();
    };
    if !bool::from(hasher.digest(secret.as_bytes()).ct_eq(stored)) {
        return invalid_client();
    }
    let granted: Vec<String> = match scope.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => consumer.scopes.to_vec(),
        Some(requested) => {
            let wanted: Vec<String> = requested
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if let Some(bad) = wanted.iter().find(|w| !consumer.scopes.contains(w)) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    &format!("scope `{bad}` was not granted to this client"),
                );
            }
            wanted
        }
    };
    match issuer.issue(&client_id, &client_id, &granted) {
        Ok((token, ttl)) => json(
            StatusCode::OK,
            serde_json::json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": ttl.as_secs(),
                "scope": granted.join(" "),
            }),
        ),
        Err(e) => {
            tracing::error!(error = %e, "token issue failed");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token could not be issued",
            )
        }
    }
}

/// Answers `GET /.well-known/jwks.json` with the issuer's public keys.
pub fn jwks(identity: &Identity) -> Response<Bytes> {
    let body = identity
        .token_issuer
        .as_ref()
        .map(|t| t.jwks_json())
        .unwrap_or_else(|| Bytes::from_static(b"{\"keys\":[]}"));
    let mut r = Response::new(body);
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    r.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let v = base64::engine::general_purpose::STANDARD.encode("partner%2Dgold:cs_gold%3A1");
        let h = HeaderValue::from_str(&format!("Basic {v}")).expect("hv");
        assert_eq!(
            basic_credentials(&h),
            Some(("partner-gold".to_string(), "cs_gold:1".to_string()))
        );
        assert_eq!(
            basic_credentials(&HeaderValue::from_static("Bearer x")),
            None
        );
        assert_eq!(
            basic_credentials(&HeaderValue::from_static("Basic !!!")),
            None
        );
    }
}
