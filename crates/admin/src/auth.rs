//! Who is calling: the platform admin (the token from the environment) or a tenant admin (a
//! token issued through the API, stored as a SHA-256 digest). Also the brake on token guessing:
//! past a few wrong tokens from one address, answers slow down, and past many they stop.

use crate::error::{ApiError, REQUEST_ID};
use crate::state::AdminState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tollgate_core::Kind;
use tollgate_core::trace::{RandomIds, new_request_id, sane_request_id};

/// The authenticated caller, put into request extensions by [`require_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Platform,
    Tenant(String),
}

impl Caller {
    /// Platform-only routes: a tenant admin gets 403.
    pub fn platform(&self) -> Result<(), ApiError> {
        match self {
            Caller::Platform => Ok(()),
            Caller::Tenant(_) => Err(ApiError::forbidden()),
        }
    }

    /// A tenant's own things: another tenant's admin gets 404, so nothing is revealed.
    pub fn tenant(&self, tenant: &str) -> Result<(), ApiError> {
        match self {
            Caller::Platform => Ok(()),
            Caller::Tenant(t) if t == tenant => Ok(()),
            Caller::Tenant(_) => Err(ApiError::not_found("tenant")),
        }
    }

    pub fn actor(&self) -> String {
        match self {
            Caller::Platform => "platform-admin".to_owned(),
            Caller::Tenant(t) => format!("tenant-admin:{t}"),
        }
    }
}

/// Digest under which tenant tokens are stored. Tokens are 256-bit random values, so a plain
/// hash is enough: nothing to brute-force.
pub fn token_digest(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    let mut s = String::with_capacity(64);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Wrong-token counters per client address over a sliding minute.
#[derive(Debug, Default)]
pub struct Guard {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Wrong tokens per minute answered at full speed.
const FREE_FAILURES: u32 = 10;
/// Wrong tokens per minute after which the address is locked out until the minute ends.
const LOCKOUT_FAILURES: u32 = 100;
const WINDOW: Duration = Duration::from_secs(60);

impl Guard {
    fn failures(&self, ip: IpAddr) -> (u32, Duration) {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&ip) {
            Some((since, n)) if since.elapsed() < WINDOW => (*n, WINDOW - since.elapsed()),
            _ => (0, Duration::ZERO),
        }
    }

    fn fail(&self, ip: IpAddr) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (since, _)| since.elapsed() < WINDOW);
        }
        let e = map.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
        e.1
    }
}

fn unauthorized(detail: &'static str) -> Response {
    let mut resp = ApiError::new(Kind::Unauthorized, detail).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
    );
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    resp
}

/// Resolves the caller or answers 401 (or 429 when an address keeps guessing).
pub async fn require_token(State(s): State<AdminState>, mut req: Request, next: Next) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let (failures, left) = s.guard.failures(ip);
    if failures >= LOCKOUT_FAILURES {
        let secs = left.as_secs().max(1);
        let mut resp = ApiError::new(
            Kind::TooManyRequests,
            "too many wrong admin tokens from this address; try again later",
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let Some(token) = presented else {
        return unauthorized("this admin route needs `Authorization: Bearer <token>`");
    };
    let caller = match &s.token {
        Some(want) if constant_time_eq(want.as_bytes(), token.as_bytes()) => Some(Caller::Platform),
        _ => match &s.manage {
            Some(m) => match m.store().tenant_for_token(&token_digest(&token)).await {
                Ok(found) => found.map(|row| Caller::Tenant(row.tenant)),
                Err(e) => return ApiError::from(e).into_response(),
            },
            None => None,
        },
    };
    let Some(caller) = caller else {
        let n = s.guard.fail(ip);
        if n > FREE_FAILURES {
            // Slow guessing down without telling a legitimate but confused client anything new.
            let delay = Duration::from_millis(50 * u64::from(n - FREE_FAILURES))
                .min(Duration::from_secs(2));
            tokio::time::sleep(delay).await;
        }
        return unauthorized("unknown admin token");
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Gives every admin request an id (the client's when sane) for problem documents and logs.
pub async fn request_id(req: Request, next: Next) -> Response {
    let id = match req.headers().get("x-request-id") {
        Some(v) if sane_request_id(v) => v.clone(),
        _ => new_request_id(&RandomIds),
    };
    let id_text = id.to_str().unwrap_or("-").to_owned();
    let mut resp = REQUEST_ID.scope(id_text, next.run(req)).await;
    resp.headers_mut().insert("x-request-id", id);
    resp
}

/// Compares without an early exit, so response timing does not reveal a token prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn guard_counts_per_address() {
        let g = Guard::default();
        let a = IpAddr::from([10, 0, 0, 1]);
        assert_eq!(g.failures(a).0, 0);
        for _ in 0..3 {
            g.fail(a);
        }
        assert_eq!(g.failures(a).0, 3);
        assert_eq!(g.failures(IpAddr::from([10, 0, 0, 2])).0, 0);
    }
}
