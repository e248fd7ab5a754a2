//! Getting a JWK Set document: over plain HTTP with a deadline and a size cap, or from a file.

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, USER_AGENT};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::path::Path;
use std::time::Duration;

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Longest the gateway waits for a refresh to settle: a slow IdP must never stall requests
/// that are waiting on an unknown-`kid` refetch for long.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Real key sets are a few KiB; anything near this is garbage or an attack.
pub const DEFAULT_MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Upper bound on an IdP's `max-age`, so a mistaken "cache for a year" cannot pin old keys.
pub const MAX_CACHE_AGE: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Http(String),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("document larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading the body failed: {0}")]
    Body(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) body: Bytes,
    /// `Cache-Control: max-age` (0 for `no-cache`/`no-store`), unclamped.
    pub(crate) max_age: Option<Duration>,
}

pub(crate) fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

pub(crate) async fn fetch_url(
    client: &HttpClient,
    uri: &Uri,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Fetched, FetchError> {
    let req = Request::get(uri.clone())
        .header(ACCEPT, "application/jwk-set+json, application/json")
        .header(USER_AGENT, concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::new()))
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let work = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        if resp.status() != StatusCode::OK {
            return Err(FetchError::Status(resp.status()));
        }
        let declared = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_bytes as u64) {
            return Err(FetchError::TooLarge(max_bytes));
        }
        let max_age = max_age(resp.headers());
        let body = Limited::new(resp.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge(max_bytes)
                } else {
                    FetchError::Body(e.to_string())
                }
            })?;
        Ok(Fetched {
            body: body.to_bytes(),
            max_age,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

pub(crate) async fn read_file(path: &Path, max_bytes: usize) -> Result<Fetched, FetchError> {
    // Checked before reading: a path to a device or FIFO would never end.
    if let Err(why) = tollgate_config::files::check(path, max_bytes as u64) {
        return Err(std::io::Error::other(why).into());
    }
    let body = tokio::fs::read(path).await?;
    if body.len() > max_bytes {
        return Err(FetchError::TooLarge(max_bytes));
    }
    Ok(Fetched {
        body: body.into(),
        max_age: None,
    })
}

/// `max-age` from every `Cache-Control` field value; `no-cache`/`no-store` count as 0.
pub(crate) fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut found = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim();
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive, None),
            };
            if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
                return Some(Duration::ZERO);
            }
            if name.eq_ignore_ascii_case("max-age")
                && let Some(secs) = arg.and_then(|a| a.parse::<u64>().ok())
            {
                found = Some(Duration::from_secs(secs));
            }
        }
    }
    found
}

/// When to refresh next after a good fetch.
pub(crate) fn next_refresh(
    max_age: Option<Duration>,
    refresh_interval: Duration,
    min_refetch_interval: Duration,
) -> Duration {
    match max_age {
        Some(age) => age.clamp(
            min_refetch_interval,
            MAX_CACHE_AGE.max(min_refetch_interval),
        ),
        None => refresh_interval,
    }
}

/// When to try again after `failures` failed fetches in a row: doubling from the minimum
/// refetch interval, never slower than the regular refresh.
pub(crate) fn retry_delay(
    failures: u32,
    refresh_interval: Duration,
    min_refetch_interval: Duration,
) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    min_refetch_interval
        .saturating_mul(factor)
        .min(refresh_interval.max(min_refetch_interval))
}
